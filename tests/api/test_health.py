"""GET /health reports whether the database answers; it needs no key."""

from __future__ import annotations

import socket

import httpx

from flow.config import Settings
from tests.api.conftest import serve
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
