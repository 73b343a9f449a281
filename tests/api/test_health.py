"""GET /health reports whether the database answers, /health/live whether the process
answers, /health/ready whether the instance can take a call (not full, not draining,
configured, database reachable); none needs a key. A draining instance refuses joins.
A former setting name set in the environment is named at start-up, with its
replacement."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from flow.config import Settings
from flow.main import create_app
from tests.api.conftest import bearer, serve
from tests.api.recording_runner import RecordingRunner


async def test_health_is_ok_without_a_key_when_the_database_answers(
    client: httpx.AsyncClient,
) -> None:
    res = await client.get("/health")
    assert res.status_code == 200
    assert res.json()["status"] == "ok"
    assert res.json()["database"] == "ok"


async def test_health_is_degraded_when_the_database_is_unreachable(
    local_settings: Settings,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    unreachable = local_settings.model_copy(
        update={"supabase_url": f"http://127.0.0.1:{closed_port}", "supabase_timeout_seconds": 2}
    )
    runner = RecordingRunner()
    async with serve(unreachable, runner) as client:
        res = await client.get("/health")
        assert res.status_code == 503
        assert res.json()["status"] == "degraded"
        assert res.json()["error"] == "database_unavailable"
        assert res.headers["Retry-After"]
        # Authenticated routes answer 503 too, not 401 or 500.
        denied = await client.get(
            "/api/usage", headers={"Authorization": "Bearer flow_sk_abcdefgh"}
        )
        assert denied.status_code == 503
        assert denied.json()["error"] == "database_unavailable"
    assert runner.shut_down


async def test_live_and_ready_answer_200_when_the_instance_can_take_a_call(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.get("/health/live")).json() == {"status": "alive"}
    ready = await client.get("/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


async def test_ready_is_503_full_when_every_bot_slot_is_held(local_settings: Settings) -> None:
    runner = RecordingRunner(capacity=1)
    runner.running.add("a-call")
    async with serve(local_settings, runner) as client:
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["error"] == "full"
        assert ready.headers["Retry-After"]
        assert (await client.get("/health/live")).status_code == 200


async def test_ready_is_503_when_the_bot_cannot_run_or_the_database_is_down(
    local_settings: Settings,
) -> None:
    unconfigured = local_settings.model_copy(update={"openai_api_key": SecretStr("")})
    async with serve(unconfigured, RecordingRunner()) as client:
        ready = await client.get("/health/ready")
        assert (ready.status_code, ready.json()["error"]) == (503, "bot_not_configured")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    unreachable = local_settings.model_copy(
        update={"supabase_url": f"http://127.0.0.1:{closed_port}", "supabase_timeout_seconds": 2}
    )
    async with serve(unreachable, RecordingRunner()) as client:
        ready = await client.get("/health/ready")
        assert (ready.status_code, ready.json()["error"]) == (503, "database_unavailable")
        assert (await client.get("/health/live")).status_code == 200


async def test_a_draining_instance_is_not_ready_refuses_joins_and_waits_for_its_calls(
    local_settings: Settings, api_key: dict[str, Any]
) -> None:
    runner = RecordingRunner()
    runner.running.add("a-live-call")
    draining = local_settings.model_copy(update={"flow_drain_seconds": 30.0})
    app = create_app(draining, runner)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://flow.test") as client:
            drained = app.state.drain.begin()
            await asyncio.sleep(0.2)
            assert not runner.taking_calls and not drained.done()
            ready = await client.get("/health/ready")
            assert (ready.status_code, ready.json()["error"]) == (503, "draining")
            assert (await client.get("/health/live")).status_code == 200
            join = await client.post(
                "/api/bot/join",
                headers=bearer(api_key),
                json={"transport": "simulated", "script": ["hi"]},
            )
            assert join.status_code == 503
            assert join.json()["error"] == "draining"
            assert int(join.headers["Retry-After"]) > 0
            assert runner.submitted == []
            runner.running.clear()  # the call ends by itself
            await asyncio.wait_for(drained, 5)
    assert runner.goodbyes == [], "a call that ended by itself hears no goodbye"


async def test_calls_still_live_when_the_drain_time_is_up_are_hung_up_with_the_goodbye(
    local_settings: Settings,
) -> None:
    runner = RecordingRunner()
    runner.running.add("a-long-call")
    quick = local_settings.model_copy(
        update={"flow_drain_seconds": 0.3, "flow_shutdown_goodbye": "Closing now, goodbye."}
    )
    app = create_app(quick, runner)
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(app.state.drain.begin(), 5)
    assert runner.goodbyes == ["Closing now, goodbye."]


async def test_each_answer_names_its_request(client: httpx.AsyncClient) -> None:
    named = await client.get("/health/live", headers={"X-Request-ID": "lb-7f3a.1"})
    assert named.headers["X-Request-ID"] == "lb-7f3a.1"
    fresh = await client.get("/health/live", headers={"X-Request-ID": "no spaces\tor tabs"})
    assert fresh.headers["X-Request-ID"] != "no spaces\tor tabs"
    assert len(fresh.headers["X-Request-ID"]) == 32


async def test_a_retired_setting_in_the_environment_is_named_at_start_and_ignored(
    local_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.delenv("FLOW_ALLOW_PRIVATE_URLS", raising=False)
    monkeypatch.setenv("FLOW_WEBHOOK_ALLOW_PRIVATE", "true")
    assert not Settings(flow_env="development").flow_allow_private_urls
    with caplog.at_level(logging.WARNING, logger="flow.main"):
        async with serve(local_settings, RecordingRunner()) as client:
            assert (await client.get("/health/live")).status_code == 200
    [warning] = [r for r in caplog.records if "FLOW_WEBHOOK_ALLOW_PRIVATE" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert "ignored" in warning.getMessage()
    assert "FLOW_ALLOW_PRIVATE_URLS" in warning.getMessage()
