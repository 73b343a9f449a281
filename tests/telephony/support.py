"""The app under test for phone calls: the real app (its real runner, the services its
settings give it) served by uvicorn in this process on a real port, because Twilio's
Media Stream is a websocket; Twilio's REST API and OpenAI are local fakes."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr

from flow import localstack
from flow.config import Settings
from flow.main import create_app
from tests.bot.test_webrtc_call import webrtc_settings
from tests.fakes.twilio_server import FakeTwilio


def phone_settings(
    settings: Settings, openai_url: str, twilio: FakeTwilio, spool_dir: Path, **kw: Any
) -> Settings:
    """Real audio settings (deterministic VAD and turn ends) and Twilio's, faked."""
    return webrtc_settings(
        settings,
        openai_url,
        spool_dir,
        flow_webrtc_loopback=False,
        twilio_account_sid=twilio.account_sid,
        twilio_auth_token=SecretStr(twilio.auth_token),
        twilio_from_number="+15550000000",
        twilio_api_base_url=twilio.base_url,
        **kw,
    )


def new_number() -> str:
    """A number no other test routes."""
    return f"+1555{random.randrange(10**7):07d}"


@asynccontextmanager
async def served_flow(settings: Settings) -> AsyncIterator[tuple[FastAPI, str]]:
    """The app on a free port of 127.0.0.1, its public URL that address; yields the app
    and the URL."""
    port = localstack.free_port(None)
    url = f"http://127.0.0.1:{port}"
    app = create_app(settings.model_copy(update={"flow_public_url": url}))
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            ws="websockets-sansio",
            lifespan="on",
        )
    )
    task = asyncio.ensure_future(server.serve())
    try:
        for _ in range(300):  # at most 30 s
            if server.started or task.done():
                break
            await asyncio.sleep(0.1)
        assert server.started, "the app did not start"
        yield app, url
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 60)
