"""Instances and the calls they hold: a call whose instance stopped beating, or that its
own instance no longer holds, is failed (``instance_lost``) at the next beat of any
live instance; a live instance's calls are left alone."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from supabase import AsyncClient

from flow.bot.instance import InstanceJobs
from flow.db import instances
from flow.db import threads as threads_repo


def jobs(sb: AsyncClient, tmp_path: Path, held: list[str], instance_id: str) -> InstanceJobs:
    async def stop(_tid: str) -> bool:
        return False

    return InstanceJobs(
        sb,
        spool_dir=tmp_path,
        max_call_seconds=60,
        running_calls=lambda: list(held),
        stop_call=stop,
        stale_seconds=5,
        instance_id=instance_id,
    )


async def running_thread(
    sb: AsyncClient, api_key: dict[str, Any], instance_id: str, **fields: Any
) -> str:
    row = await threads_repo.create_thread(
        sb,
        api_key_id=api_key["id"],
        transport="simulated",
        script=["hi"],
        status="running",
        instance_id=instance_id,
        **fields,
    )
    return str(row["workflow_thread_id"])


async def status_of(sb: AsyncClient, tid: str) -> tuple[str, str | None]:
    row = await threads_repo.get_thread(sb, tid)
    assert row is not None
    return row["status"], row["error_code"]


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_calls_of_an_instance_that_stopped_beating_are_failed_at_the_next_beat(
    sb: AsyncClient, api_key: dict[str, Any], tmp_path: Path
) -> None:
    me, alive, dead = name("me"), name("alive"), name("dead")
    await instances.heartbeat(sb, alive, "host-b", 2)
    orphan = await running_thread(sb, api_key, dead)  # its instance never beat again
    kept = await running_thread(sb, api_key, alive)

    assert orphan in await jobs(sb, tmp_path, [], me).beat()
    assert await status_of(sb, orphan) == ("failed", "instance_lost")
    assert await status_of(sb, kept) == ("running", None)


async def test_a_call_its_own_instance_no_longer_holds_is_failed(
    sb: AsyncClient, api_key: dict[str, Any], tmp_path: Path
) -> None:
    """The call ended here but its end could not be written (a database blip)."""
    me = name("me")
    long_ago = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    dropped = await running_thread(sb, api_key, me, updated_at=long_ago)
    held = await running_thread(sb, api_key, me, updated_at=long_ago)
    just_taken = await running_thread(sb, api_key, me)  # not yet in the held list

    lost = await jobs(sb, tmp_path, [held], me).beat()
    assert dropped in lost and held not in lost and just_taken not in lost
    assert await status_of(sb, dropped) == ("failed", "instance_lost")
    assert await status_of(sb, held) == ("running", None)
    assert await status_of(sb, just_taken) == ("running", None)


async def test_an_instance_that_stops_leaves_the_table(sb: AsyncClient, tmp_path: Path) -> None:
    me = name("me")
    instance = jobs(sb, tmp_path, [], me)
    instance.start()
    await instance.beat()
    res = await sb.table("flow_instances").select("id").eq("id", me).execute()
    assert res.data == [{"id": me}]
    await instance.stop()
    res = await sb.table("flow_instances").select("id").eq("id", me).execute()
    assert res.data == []
