"""Unkey mode: every verification outcome maps to the documented HTTP answer, through the
real ``unkey.py`` SDK against a local fake Unkey; an outage fails closed with 503."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from supabase import AsyncClient

from flow.config import Settings
from flow.db.client import call, rows_of
from tests.api.conftest import serve
from tests.api.recording_runner import RecordingRunner
from tests.auth.conftest import unkey_settings
from tests.fakes.unkey_server import FakeUnkey

KEY = "uk_live_0123456789abcdef"


def _bearer(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _unkey_rows(sb: AsyncClient, unkey_key_id: str) -> list[dict[str, Any]]:
    res = await call(
        sb.table("api_keys").select("id,name,owner").eq("unkey_key_id", unkey_key_id).execute
    )
    return rows_of(res)


async def test_a_valid_unkey_key_maps_to_one_api_keys_row_created_on_first_sight(
    settings: Settings, fake_unkey: FakeUnkey, sb: AsyncClient
) -> None:
    fake = fake_unkey.add_key(KEY, name="acme prod", external_id="acme")
    runner = RecordingRunner()
    async with serve(unkey_settings(settings, fake_unkey, 0), runner) as client:
        res = await client.post(
            "/api/bot/join",
            json={"transport": "simulated", "script": ["hi"]},
            headers=_bearer(),
        )
        assert res.status_code == 202, res.text
        again = await client.get(f"/api/bot/{res.json()['workflow_thread_id']}", headers=_bearer())
        assert again.status_code == 200
    [row] = await _unkey_rows(sb, fake.key_id)
    assert row["name"] == "acme prod"
    assert row["owner"] == "acme"
    assert runner.submitted[0].api_key_id == row["id"]
    # The SDK sent our root key, never the caller's key, as its credential.
    assert set(fake_unkey.seen_authorization) == {f"Bearer {fake_unkey.root_key}"}
    assert fake_unkey.verifications == 2


@pytest.mark.parametrize(
    ("code", "status", "error"),
    [
        ("NOT_FOUND", 401, "key_not_found"),
        ("EXPIRED", 401, "key_expired"),
        ("DISABLED", 401, "key_disabled"),
        ("FORBIDDEN", 403, "forbidden"),
        ("INSUFFICIENT_PERMISSIONS", 403, "insufficient_permissions"),
        ("RATE_LIMITED", 429, "rate_limited"),
        ("USAGE_EXCEEDED", 429, "usage_exceeded"),
        ("SOMETHING_NEW", 401, "key_invalid"),
    ],
)
async def test_each_unkey_code_maps_to_its_http_answer(
    settings: Settings, fake_unkey: FakeUnkey, code: str, status: int, error: str
) -> None:
    fake_unkey.add_key(KEY, code=code)
    async with serve(unkey_settings(settings, fake_unkey, 30), RecordingRunner()) as client:
        res = await client.get("/api/usage", headers=_bearer())
        assert res.status_code == status, res.text
        assert res.json()["error"] == error
        assert res.json()["message"]
        if status == 401:
            assert res.headers["WWW-Authenticate"].startswith("Bearer")
        # Refusals are not cached: the next request asks Unkey again.
        await client.get("/api/usage", headers=_bearer())
    assert fake_unkey.verifications == 2


async def test_a_key_unkey_does_not_know_is_401(settings: Settings, fake_unkey: FakeUnkey) -> None:
    async with serve(unkey_settings(settings, fake_unkey, 30), RecordingRunner()) as client:
        res = await client.get("/api/usage", headers=_bearer("uk_never_issued_123"))
    assert res.status_code == 401
    assert res.json()["error"] == "key_not_found"


@pytest.mark.parametrize(
    ("reset", "expected_seconds"),
    [
        (2500, 3),  # a duration in ms, as the SDK documents it
        (None, 42),  # a Unix time in ms, as the API reference documents it
    ],
)
async def test_rate_limited_answers_retry_after_from_the_ratelimit_reset(
    settings: Settings, fake_unkey: FakeUnkey, reset: int | None, expected_seconds: int
) -> None:
    reset_value = reset if reset is not None else int(time.time() * 1000) + 41_200
    fake_unkey.add_key(
        KEY,
        code="RATE_LIMITED",
        ratelimits=[
            {
                "id": "rl_1",
                "name": "requests",
                "exceeded": True,
                "limit": 10,
                "duration": 60000,
                "reset": reset_value,
                "remaining": 0,
                "autoApply": True,
            },
            {
                "id": "rl_2",
                "name": "tokens",
                "exceeded": False,
                "limit": 1000,
                "duration": 1000,
                "reset": 100,
                "remaining": 900,
                "autoApply": True,
            },
        ],
    )
    async with serve(unkey_settings(settings, fake_unkey, 30), RecordingRunner()) as client:
        res = await client.get("/api/usage", headers=_bearer())
    assert res.status_code == 429
    assert abs(int(res.headers["Retry-After"]) - expected_seconds) <= 1


@pytest.mark.parametrize("fail_with", [500, 503, 502])
async def test_unkey_answering_5xx_fails_closed_with_503(
    settings: Settings, fake_unkey: FakeUnkey, fail_with: int
) -> None:
    fake_unkey.add_key(KEY)
    fake_unkey.fail_with = fail_with
    async with serve(unkey_settings(settings, fake_unkey, 30), RecordingRunner()) as client:
        res = await client.get("/api/usage", headers=_bearer())
    assert res.status_code == 503
    assert res.json()["error"] == "auth_unavailable"
    assert int(res.headers["Retry-After"]) > 0


async def test_unkey_down_fails_closed_with_503(settings: Settings, fake_unkey: FakeUnkey) -> None:
    fake_unkey.add_key(KEY)
    fake_unkey.stop()  # connection refused from now on
    async with serve(unkey_settings(settings, fake_unkey, 30), RecordingRunner()) as client:
        res = await client.get("/api/usage", headers=_bearer())
    assert res.status_code == 503
    assert res.json()["error"] == "auth_unavailable"


async def test_a_wrong_root_key_is_our_outage_not_the_callers_fault(
    settings: Settings, fake_unkey: FakeUnkey
) -> None:
    fake_unkey.add_key(KEY)
    configured = unkey_settings(settings, fake_unkey, 30)
    fake_unkey.root_key = "a-different-root-key"
    async with serve(configured, RecordingRunner()) as client:
        res = await client.get("/api/usage", headers=_bearer())
    assert res.status_code == 503


async def test_valid_verdicts_are_cached_for_the_ttl_and_not_at_all_when_it_is_zero(
    settings: Settings, fake_unkey: FakeUnkey
) -> None:
    fake_unkey.add_key(KEY)
    async with serve(unkey_settings(settings, fake_unkey, 30), RecordingRunner()) as client:
        for _ in range(5):
            assert (await client.get("/api/usage", headers=_bearer())).status_code == 200
    assert fake_unkey.verifications == 1

    fake_unkey.verifications = 0
    async with serve(unkey_settings(settings, fake_unkey, 0), RecordingRunner()) as client:
        for _ in range(5):
            assert (await client.get("/api/usage", headers=_bearer())).status_code == 200
    assert fake_unkey.verifications == 5


async def test_a_cached_verdict_expires_after_the_ttl(
    settings: Settings, fake_unkey: FakeUnkey
) -> None:
    fake_unkey.add_key(KEY)
    async with serve(unkey_settings(settings, fake_unkey, 0.3), RecordingRunner()) as client:
        assert (await client.get("/api/usage", headers=_bearer())).status_code == 200
        fake_unkey.add_key(KEY, code="DISABLED")
        assert (await client.get("/api/usage", headers=_bearer())).status_code == 200
        await asyncio.sleep(0.4)
        res = await client.get("/api/usage", headers=_bearer())
    assert res.status_code == 401
    assert res.json()["error"] == "key_disabled"
