from tests.workflows.support import openai_server, posthog_sink

__all__ = ["openai_server", "posthog_sink"]
