"""The API under test: the real app (real auth, real database through the stack
fixtures) with a recording runner, reached over HTTP by ``httpx.AsyncClient``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from flow.config import Settings
from flow.main import create_app
from tests.api.recording_runner import RecordingRunner


@asynccontextmanager
async def serve(settings: Settings, runner: RecordingRunner) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, and a client speaking HTTP to it in process."""
    app = create_app(settings, runner)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://flow.test") as client:
            yield client


def bearer(api_key: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key['plaintext']}"}


@pytest.fixture
def runner() -> RecordingRunner:
    return RecordingRunner()


def local_mode(settings: Settings) -> Settings:
    """The settings in local-key mode with the auth cache on (at its longest)."""
    return settings.model_copy(
        update={
            "unkey_root_key": SecretStr(""),
            "flow_auth_cache_ttl_seconds": 30.0,
            "flow_webhook_secret": SecretStr("whsec-api-tests"),
            "openai_api_key": SecretStr("sk-api-tests"),
        }
    )


@pytest.fixture
def local_settings(settings: Settings) -> Settings:
    return local_mode(settings)


@pytest.fixture
async def client(
    local_settings: Settings, runner: RecordingRunner
) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(local_settings, runner) as c:
        yield c


@pytest.fixture
def auth(api_key: dict[str, Any]) -> dict[str, str]:
    return bearer(api_key)
