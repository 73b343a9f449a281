"""Flow: voice bots on Pipecat that meter every cent, per call, per API key, per end user."""

__version__ = "0.1.0"
