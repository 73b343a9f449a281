from tests.api.conftest import auth, client, local_settings, runner

__all__ = ["auth", "client", "local_settings", "runner"]
