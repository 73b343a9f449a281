"""The voice bot: Pipecat pipeline, usage metering processor, transcript, call runner."""
