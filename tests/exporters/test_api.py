"""The integrations API over HTTP (real app, real auth, real database, local sinks):
validation before saving, masked credentials, pause/resume/sync now/delete, and the
scheduler running inside the app."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from supabase import AsyncClient

from flow.config import Settings
from flow.main import create_app
from tests.api.recording_runner import RecordingRunner
from tests.exporters.conftest import MP_SECRET, MP_TOKEN, PH_KEY, seed, wait_until
from tests.fakes.analytics_sinks import MixpanelSink, PostHogSink

pytestmark = pytest.mark.usefixtures("cleanup_integrations")


@pytest.fixture
async def client(export_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(export_settings, RecordingRunner())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://flow.test") as c:
            yield c


@pytest.fixture
def auth(api_key: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key['plaintext']}"}


async def test_lifecycle_over_http_never_shows_secrets(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    sb: AsyncClient,
    thread: dict[str, Any],
    posthog_sink: PostHogSink,
    mixpanel_sink: MixpanelSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    bodies: list[str] = []

    async def send(method: str, url: str, **kw: Any) -> httpx.Response:
        res = await client.request(method, url, headers=auth, **kw)
        bodies.append(res.text)
        return res

    events = await seed(sb, thread, 30)
    # PostHog's first cycle (the scheduler inside the app claims the new integration at
    # its next tick) stays in flight on a slow destination while "sync now" arrives.
    posthog_sink.hold()
    res = await send(
        "POST",
        "/api/integrations",
        json={
            "provider": "posthog",
            "host": posthog_sink.url,
            "project_api_key": PH_KEY,
            "sync_interval_seconds": 60,
            "backfill": "all",
        },
    )
    assert res.status_code == 201, res.text
    ph = res.json()
    assert ph["status"] == "active" and ph["credentials_hint"] == f"key phc_…{PH_KEY[-4:]}"
    assert ph["cursor"] == {"txid": ph["cursor"]["txid"], "seq": 0}
    await wait_until(lambda: posthog_sink.held > 0)

    res = await send(
        "POST",
        "/api/integrations",
        json={
            "provider": "mixpanel",
            "api_host": mixpanel_sink.url,
            "project_token": MP_TOKEN,
            "api_secret": MP_SECRET,
            "backfill": {"days": 30},
            "distinct_id": "end_user",
        },
    )
    assert res.status_code == 201, res.text
    mp = res.json()

    # Usage after the cycle in flight read its page: only the requested cycle sends it.
    events += await seed(sb, thread, 5)
    # Sync now: the scheduler inside the app runs the cycles; PostHog's request, made
    # during its cycle, runs one more right after it.
    assert (await send("POST", f"/api/integrations/{ph['id']}/sync")).status_code == 202
    assert (await send("POST", f"/api/integrations/{mp['id']}/sync")).status_code == 202
    posthog_sink.release()

    await wait_until(lambda: len(posthog_sink.events) == 35 and len(mixpanel_sink.events) == 35)
    detail: dict[str, Any] = {}
    for _ in range(3000):  # the cycle records its result right after the last batch
        detail = (await send("GET", f"/api/integrations/{ph['id']}")).json()
        if detail["events_exported"] == 35 and detail["status"] == "active":
            break
        await asyncio.sleep(0.01)
    assert detail["events_exported"] == 35 and detail["last_synced_at"] is not None
    assert detail["cursor"]["seq"] > 0
    assert len({e["uuid"] for e in posthog_sink.events}) == 35
    assert {e["distinct_id"] for e in posthog_sink.events} == {"prism-gateway"}
    assert {e["properties"]["distinct_id"] for e in mixpanel_sink.events} == {
        e.end_user_id for e in events
    }

    listed = (await send("GET", "/api/integrations")).json()
    assert {i["id"] for i in listed} == {ph["id"], mp["id"]}

    res = await send("PATCH", f"/api/integrations/{mp['id']}", json={"api_secret": "wrong"})
    assert res.status_code == 422 and res.json()["error"] == "invalid_credentials"
    new_secret = "newsecret0123456789abcdef0123456"
    mixpanel_sink.api_secrets.add(new_secret)
    res = await send("PATCH", f"/api/integrations/{mp['id']}", json={"api_secret": new_secret})
    assert res.status_code == 200 and "…3456" in res.json()["credentials_hint"]

    paused = (await send("POST", f"/api/integrations/{ph['id']}/pause")).json()
    assert paused["status"] == "paused"
    res = await send("POST", f"/api/integrations/{ph['id']}/sync")
    assert res.status_code == 409 and res.json()["error"] == "not_active"
    assert (await send("POST", f"/api/integrations/{ph['id']}/resume")).json()["status"] in (
        "active",
        "syncing",
    )
    assert (await send("DELETE", f"/api/integrations/{ph['id']}")).status_code == 204
    res = await send("GET", f"/api/integrations/{ph['id']}")
    assert res.status_code == 404 and res.json()["error"] == "not_found"

    secrets = [PH_KEY, MP_TOKEN, MP_SECRET, new_secret]
    logs = "\n".join(r.getMessage() for r in caplog.records)
    for secret in secrets:
        assert all(secret not in body for body in bodies), "secret in an API response"
        assert secret not in logs, "secret in the logs"
    assert all("credentials_encrypted" not in body for body in bodies)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"project_api_key": "phc_unknownkey"}, 422, "bad key"),
        ({"project_api_key": "phx_personalkey"}, 422, "personal API key"),
        ({"project_api_key": PH_KEY, "host": "http://127.0.0.1:9"}, 422, "unreachable host"),
        ({"project_api_key": PH_KEY, "sync_interval_seconds": 30}, 422, "sync_interval_seconds"),
        ({"project_api_key": PH_KEY, "backfill": {"weeks": 2}}, 422, "backfill"),
        ({"project_api_key": PH_KEY, "all_keys": True}, 422, "all_keys"),
    ],
)
async def test_bad_posthog_requests_get_a_clear_4xx(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    posthog_sink: PostHogSink,
    body: dict[str, Any],
    status: int,
    needle: str,
) -> None:
    payload = {"provider": "posthog", "host": posthog_sink.url, **body}
    res = await client.post("/api/integrations", headers=auth, json=payload)
    assert res.status_code == status, res.text
    answer = res.json()
    assert set(answer) >= {"error", "message"}
    assert needle in json.dumps(answer)
    assert "phc_unknownkey" not in res.text and "phx_personalkey" not in res.text


async def test_an_integration_is_invisible_to_other_keys(
    client: httpx.AsyncClient, auth: dict[str, str], posthog_sink: PostHogSink, sb: AsyncClient
) -> None:
    from flow.db import keys as keys_repo

    res = await client.post(
        "/api/integrations",
        headers=auth,
        json={"provider": "posthog", "host": posthog_sink.url, "project_api_key": PH_KEY},
    )
    iid = res.json()["id"]
    other_row, other = await keys_repo.create_local_key(sb, "other", owner="tests")
    try:
        headers = {"Authorization": f"Bearer {other}"}
        assert (await client.get(f"/api/integrations/{iid}", headers=headers)).status_code == 404
        assert (await client.delete(f"/api/integrations/{iid}", headers=headers)).status_code == 404
        assert (await client.get("/api/integrations", headers=headers)).json() == []
    finally:
        await sb.table("api_keys").delete().eq("id", other_row["id"]).execute()
