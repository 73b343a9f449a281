"""One router per resource: bots, usage, health."""
