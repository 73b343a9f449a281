"""Local mode: only keys made by ``flow keys create`` pass, a revoked key stops at once
(even with the cache on), and a missing or malformed header is a Bearer 401."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from supabase import AsyncClient

from flow.config import Settings
from flow.db import keys as keys_repo
from flow.db.client import call, first_of
from tests.api.conftest import bearer, serve
from tests.api.recording_runner import RecordingRunner


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({}, "missing_credentials"),
        ({"Authorization": ""}, "missing_credentials"),
        ({"Authorization": "Bearer"}, "missing_credentials"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "missing_credentials"),
        ({"Authorization": "Bearer short"}, "key_invalid"),
        ({"Authorization": "Bearer flow_sk_" + "x" * 600}, "key_invalid"),
        ({"Authorization": "Bearer flow_sk_made_up_by_someone"}, "key_invalid"),
    ],
)
async def test_requests_without_a_valid_key_are_401_with_a_bearer_challenge(
    local_settings: Settings, headers: dict[str, str], error: str
) -> None:
    async with serve(local_settings, RecordingRunner()) as client:
        res = await client.get("/api/usage", headers=headers)
    assert res.status_code == 401
    assert res.json()["error"] == error
    assert res.headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_revoked_key_is_refused_at_once_with_the_cache_on(
    local_settings: Settings, api_key: dict[str, Any], sb: AsyncClient
) -> None:
    assert local_settings.flow_auth_cache_ttl_seconds == 30
    async with serve(local_settings, RecordingRunner()) as client:
        assert (await client.get("/api/usage", headers=bearer(api_key))).status_code == 200
        await keys_repo.revoke_key(sb, str(api_key["id"]))
        res = await client.get("/api/usage", headers=bearer(api_key))
    assert res.status_code == 401
    assert res.json()["error"] == "key_invalid"


async def test_last_used_at_is_kept_current_without_a_write_per_request(
    local_settings: Settings, api_key: dict[str, Any], sb: AsyncClient
) -> None:
    async def last_used() -> str | None:
        res = await call(
            sb.table("api_keys").select("last_used_at").eq("id", api_key["id"]).execute
        )
        row = first_of(res)
        assert row is not None
        return row["last_used_at"]

    assert await last_used() is None
    async with serve(local_settings, RecordingRunner()) as client:
        assert (await client.get("/api/usage", headers=bearer(api_key))).status_code == 200
        for _ in range(50):  # the touch runs in the background
            if await last_used():
                break
            await asyncio.sleep(0.02)
        first = await last_used()
        assert first is not None
        for _ in range(3):
            await client.get("/api/usage", headers=bearer(api_key))
        app_auth = client._transport.app.state.auth  # type: ignore[attr-defined]
        assert not app_auth._background  # no further touch was scheduled
    assert await last_used() == first


def _flow(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """``flow ARGS`` on the test stack, running this checkout's ``flow`` package."""
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p),
        "SUPABASE_URL": settings.supabase_url,
        "SUPABASE_SERVICE_ROLE_KEY": settings.supabase_service_role_key.get_secret_value(),
    }
    return subprocess.run(
        [sys.executable, "-m", "flow.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_keys_made_and_revoked_by_the_cli_work_with_the_api(
    local_settings: Settings,
) -> None:
    created = await asyncio.to_thread(_flow, local_settings, "keys", "create", "--name", "cli key")
    assert created.returncode == 0, created.stderr
    plaintext = created.stdout.strip().splitlines()[-1]
    key_id = created.stdout.split()[2]
    async with serve(local_settings, RecordingRunner()) as client:
        headers = {"Authorization": f"Bearer {plaintext}"}
        assert (await client.get("/api/usage", headers=headers)).status_code == 200
        listed = await asyncio.to_thread(_flow, local_settings, "keys", "list")
        assert key_id in listed.stdout
        assert plaintext not in listed.stdout
        revoked = await asyncio.to_thread(_flow, local_settings, "keys", "revoke", key_id)
        assert revoked.returncode == 0, revoked.stderr
        assert (await client.get("/api/usage", headers=headers)).status_code == 401
