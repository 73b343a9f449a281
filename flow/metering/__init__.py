"""Metering: the usage event, its price, and the meter that records it exactly once."""
