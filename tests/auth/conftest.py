"""Auth tests run the real app against the real database and, for Unkey mode, the real
``unkey.py`` SDK talking to a local fake Unkey server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from flow.config import Settings
from tests.api.conftest import local_mode
from tests.fakes.unkey_server import FakeUnkey


@pytest.fixture
def local_settings(settings: Settings) -> Settings:
    return local_mode(settings)


@pytest.fixture
def fake_unkey() -> Iterator[FakeUnkey]:
    server = FakeUnkey().start()
    yield server
    server.stop()


def unkey_settings(settings: Settings, fake: FakeUnkey, ttl_seconds: float) -> Settings:
    return settings.model_copy(
        update={
            "unkey_root_key": SecretStr(fake.root_key),
            "unkey_base_url": fake.base_url,
            "unkey_timeout_seconds": 2.0,
            "flow_auth_cache_ttl_seconds": ttl_seconds,
            "openai_api_key": SecretStr("sk-auth-tests"),
        }
    )
