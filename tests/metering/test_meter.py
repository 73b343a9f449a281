"""The meter against the real ledger: batches, retries, spool and replay, listeners."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

from supabase import AsyncClient

from flow.db import threads as threads_repo
from flow.db.client import create_client
from flow.metering.events import UsageEvent, UsageKind
from flow.metering.meter import Meter
from flow.metering.spool import SPOOL_FILE, append_to_spool, replay_spool


def events_for(thread: dict[str, Any], n: int) -> list[UsageEvent]:
    return [
        UsageEvent(
            workflow_thread_id=thread["workflow_thread_id"],
            api_key_id=thread["api_key_id"],
            kind=UsageKind.TTS,
            provider="openai",
            model="tts-1",
            characters=10 + i,
        )
        for i in range(n)
    ]


def files_in(path: Path) -> list[Path]:
    """Every file below ``path`` (the spool, and the meters' write-ahead logs)."""
    return [p for p in path.rglob("*") if p.is_file()]


def tear_last_line(path: Path) -> None:
    with open(path, "a") as fh:
        fh.write('{"id": "torn')


async def stats(sb: AsyncClient, thread: dict[str, Any]) -> dict[str, Any]:
    row = await threads_repo.get_thread(sb, thread["workflow_thread_id"])
    assert row is not None
    return dict(row["usage_stats"])


async def unreachable_client(settings: Any) -> AsyncClient:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return await create_client(
        settings.model_copy(update={"supabase_url": f"http://127.0.0.1:{port}"})
    )


async def test_events_are_recorded_in_batches_at_close(
    sb: AsyncClient, thread: dict[str, Any], tmp_path: Path
) -> None:
    meter = Meter(sb, spool_dir=tmp_path, flush_seconds=60)
    meter.start()
    for e in events_for(thread, 5):
        meter.add(e)
    assert meter.pending == 5  # nothing left the process on add
    await meter.close()
    await meter.close()  # idempotent
    assert (meter.recorded, meter.spooled, meter.pending) == (5, 0, 0)
    assert (await stats(sb, thread))["tts_characters"] == sum(range(10, 15))


async def test_unreachable_database_spools_and_replay_counts_once(
    sb: AsyncClient, settings: Any, thread: dict[str, Any], tmp_path: Path
) -> None:
    meter = Meter(await unreachable_client(settings), spool_dir=tmp_path, backoff_seconds=0.01)
    events = events_for(thread, 4)
    for e in events:
        meter.add(e)
    await meter.close()
    assert (meter.recorded, meter.spooled) == (0, 4)
    assert len((tmp_path / SPOOL_FILE).read_text().splitlines()) == 4

    assert await replay_spool(sb, tmp_path) == 4
    assert not files_in(tmp_path)  # replayed files are removed
    # The same events spooled again (a flush that reached the database but lost its
    # answer) replay as nothing new.
    append_to_spool(tmp_path, events)
    assert await replay_spool(sb, tmp_path) == 0
    s = await stats(sb, thread)
    assert (s["events"], s["tts_characters"]) == (4, sum(range(10, 14)))


async def test_failed_replay_keeps_the_spool_and_a_torn_line_is_skipped(
    sb: AsyncClient, settings: Any, thread: dict[str, Any], tmp_path: Path
) -> None:
    events = events_for(thread, 3)
    append_to_spool(tmp_path, events)
    tear_last_line(tmp_path / SPOOL_FILE)  # a crash mid-write
    assert await replay_spool(await unreachable_client(settings), tmp_path) == 0
    assert len(files_in(tmp_path)) == 1  # kept for the next start
    assert await replay_spool(sb, tmp_path) == 3
    assert (await stats(sb, thread))["events"] == 3


async def test_listeners_see_each_event_and_their_errors_are_swallowed(
    sb: AsyncClient, thread: dict[str, Any], tmp_path: Path
) -> None:
    seen: list[UsageEvent] = []

    def broken(_e: UsageEvent) -> None:
        raise RuntimeError("listener bug")

    meter = Meter(sb, spool_dir=tmp_path, listeners=[broken, seen.append])
    events = events_for(thread, 2)
    for e in events:
        meter.add(e)
    assert seen == events and meter.events == events
    await meter.close()
    assert meter.recorded == 2


async def test_replays_running_at_once_record_each_event_once_and_never_fail(
    sb: AsyncClient, thread: dict[str, Any], tmp_path: Path
) -> None:
    events = events_for(thread, 6)
    append_to_spool(tmp_path, events[:3])
    append_to_spool(tmp_path, events[3:])
    counts = await asyncio.gather(*(replay_spool(sb, tmp_path) for _ in range(4)))
    assert sum(counts) == 6
    assert not files_in(tmp_path)
    assert (await stats(sb, thread))["events"] == 6
