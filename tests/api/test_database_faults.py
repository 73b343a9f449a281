"""What the API and the meter do when the database is not there, or refuses.

PostgREST down is reproduced for real: the local ``/rest/v1`` gateway in front of a
port nobody listens on answers 500, as it does when PostgREST has stopped. A refusal
is a gateway stub answering PostgREST's JSON error.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import SecretStr

from flow.config import Settings
from flow.db.client import create_client
from flow.localstack.gateway import build_app
from flow.metering.events import UsageEvent, UsageKind
from flow.metering.meter import Meter
from flow.metering.spool import SPOOL_FILE
from tests.api.conftest import local_mode, serve
from tests.api.recording_runner import RecordingRunner

KEY = {"Authorization": "Bearer flow_sk_test_0000000000000000000000000000000000000000"}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def running(app: web.Application) -> AsyncIterator[tuple[str, list[str]]]:
    """Serve ``app`` on a free port; yields its URL and the paths it was asked for."""
    seen: list[str] = []

    @web.middleware
    async def count(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        seen.append(request.path)
        return await handler(request)

    app.middlewares.append(count)
    runner = web.AppRunner(app)
    await runner.setup()
    port = closed_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


def refusing_gateway() -> web.Application:
    async def refuse(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "code": "23514",
                "message": 'new row for relation "api_keys" violates check constraint '
                '"api_keys_one_identity"',
                "details": None,
                "hint": None,
            },
            status=400,
        )

    app = web.Application()
    app.router.add_route("*", "/rest/v1/{tail:.*}", refuse)
    return app


def pointed_at(settings: Settings, url: str, **update: Any) -> Settings:
    return local_mode(settings).model_copy(
        update={"supabase_url": url, "supabase_service_role_key": SecretStr("x"), **update}
    )


async def test_postgrest_down_is_503_with_retry_after_on_every_route(settings: Settings) -> None:
    async with running(build_app(f"http://127.0.0.1:{closed_port()}")) as (url, seen):
        async with serve(pointed_at(settings, url), RecordingRunner()) as client:
            answers = [
                await client.get("/api/usage", headers=KEY),
                await client.get(f"/api/bot/{uuid.uuid4()}", headers=KEY),
                await client.post(
                    "/api/bot/join",
                    headers=KEY,
                    json={"transport": "simulated", "script": ["hi"]},
                ),
                await client.get("/api/integrations", headers=KEY),
            ]
    assert seen, "the requests reached the gateway"
    for res in answers:
        assert res.status_code == 503, res.text
        assert res.json()["error"] == "database_unavailable"
        assert res.headers["Retry-After"]


async def test_a_database_refusal_is_our_500_with_an_error_id_and_no_internals(
    settings: Settings,
) -> None:
    async with running(refusing_gateway()) as (url, _):
        async with serve(pointed_at(settings, url), RecordingRunner()) as client:
            res = await client.get("/api/usage", headers=KEY)
    assert res.status_code == 500, res.text
    body = res.json()
    assert body["error"] == "internal_error"
    assert res.headers["X-Error-Id"] in body["message"]
    assert "api_keys" not in res.text and "constraint" not in res.text


async def test_the_meter_retries_a_gateway_500_before_it_spools(
    settings: Settings, tmp_path: Path
) -> None:
    async with running(build_app(f"http://127.0.0.1:{closed_port()}")) as (url, seen):
        sb = await create_client(pointed_at(settings, url))
        meter = Meter(sb, spool_dir=tmp_path, max_attempts=3, backoff_seconds=0.01)
        meter.add(
            UsageEvent(
                workflow_thread_id=uuid.uuid4(),
                api_key_id=uuid.uuid4(),
                kind=UsageKind.TTS,
                provider="openai",
                model="tts-1",
                characters=12,
            )
        )
        await meter.close()
    assert [p for p in seen if p.endswith("/rpc/record_usage_events")] == [
        "/rest/v1/rpc/record_usage_events"
    ] * 3
    assert meter.spooled == 1 and meter.recorded == 0
    assert len((tmp_path / SPOOL_FILE).read_text().splitlines()) == 1
