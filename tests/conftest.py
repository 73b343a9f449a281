"""Shared fixtures: one real local stack (Postgres + PostgREST + gateway) per test
session, a supabase-py client on it, and factories for keys and threads."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from supabase import AsyncClient

from flow import localstack
from flow.config import Settings, get_settings
from flow.db import keys as keys_repo
from flow.db import threads as threads_repo
from flow.db.client import create_client


@pytest.fixture(scope="session")
def stack() -> Iterator[localstack.StackInfo]:
    """A throwaway stack on free ports, started once per session and deleted after."""
    state_dir = Path(tempfile.mkdtemp(prefix="flow-test-stack-"))
    info = localstack.up(state_dir, fixed_ports=False, quiet=True)
    saved = {k: os.environ.get(k) for k in ("SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY")}
    os.environ["SUPABASE_URL"] = info.supabase_url
    os.environ["SUPABASE_SERVICE_ROLE_KEY"] = info.service_role_key
    os.environ.setdefault("FLOW_ENV", "test")
    get_settings.cache_clear()
    yield info
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    get_settings.cache_clear()
    localstack.destroy(state_dir)


@pytest.fixture(scope="session")
def settings(stack: localstack.StackInfo) -> Settings:
    return get_settings()


@pytest.fixture(scope="session")
async def sb(settings: Settings) -> AsyncIterator[AsyncClient]:
    client = await create_client(settings)
    yield client


@pytest.fixture
async def api_key(sb: AsyncClient) -> dict[str, Any]:
    """A fresh local key: its row plus ``plaintext``."""
    row, plaintext = await keys_repo.create_local_key(sb, "test key", owner="tests")
    return {**row, "plaintext": plaintext}


@pytest.fixture
async def thread(sb: AsyncClient, api_key: dict[str, Any]) -> dict[str, Any]:
    return await threads_repo.create_thread(
        sb, api_key_id=api_key["id"], transport="simulated", script=["hello"]
    )
