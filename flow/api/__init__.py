"""The HTTP API: dependencies, error mapping, limits and one router per resource."""
