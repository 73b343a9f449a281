"""``flow demo``: Flow end to end on one machine with no API keys.

The offline parts here (an OpenAI-compatible responder and a PostHog capture sink) exist
only for the demo and say so in their names; the product never uses them. The demo's
WebRTC caller (:mod:`flow.demo.caller`) calls a bot the way a person's browser would,
so the voice tests and benchmarks call with it too.
"""
