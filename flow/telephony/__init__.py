"""Phone calls: Twilio's webhooks, signatures and REST API, and the numbers Flow answers."""
