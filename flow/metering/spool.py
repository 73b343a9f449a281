"""The spool: usage the ledger could not take yet, kept on local disk until it can.

A meter whose flush keeps failing appends the batch to ``FLOW_SPOOL_DIR/usage.jsonl``
(one event row a line, fsynced); :func:`replay_spool` records it once the database is
back (the runner's instance jobs call it at start and every minute). Replaying twice,
or replaying a batch that did reach the database before the connection dropped, counts
nothing twice: every event keeps the id it was created with, and the ledger inserts an
id once.

Failure behaviour: a line torn by a crash mid-write is skipped and logged (the rest of
the file still counts); a replay that fails leaves its file for the next replay.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

from supabase import AsyncClient

from flow.db.client import DatabaseError, DatabaseUnavailable
from flow.db.usage import record_usage_events
from flow.metering.events import UsageEvent
from flow.metering.wal import dead_logs, read_log, remove_if_dead

log = logging.getLogger(__name__)

SPOOL_FILE = "usage.jsonl"
REPLAY_SUFFIX = ".replaying"
# One lock for every meter in the process: appends from concurrent calls must not
# interleave inside a line.
_spool_lock = threading.Lock()
_replay_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _files_to_replay(spool_dir: Path) -> list[Path]:
    """Set the live spool file aside (meters append to a fresh one) and list every file
    waiting for a replay."""
    if not spool_dir.exists():
        return []
    live = spool_dir / SPOOL_FILE
    with _spool_lock:
        if live.exists() and live.stat().st_size > 0:
            live.rename(spool_dir / f"usage.{time.time_ns()}.jsonl{REPLAY_SUFFIX}")
    return sorted(spool_dir.glob(f"*{REPLAY_SUFFIX}"))


def _replay_lock() -> asyncio.Lock:
    """One replay at a time per event loop (asyncio locks belong to a loop)."""
    loop = asyncio.get_running_loop()
    lock = _replay_locks.get(loop)
    if lock is None:
        lock = _replay_locks[loop] = asyncio.Lock()
    return lock


def append_to_spool(spool_dir: Path, events: Sequence[UsageEvent]) -> None:
    """Append events to the spool file, one JSON row a line, and fsync."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(e.to_row(), separators=(",", ":")) + "\n" for e in events)
    with _spool_lock, open(spool_dir / SPOOL_FILE, "a", encoding="utf-8") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    log.warning("spooled %d usage events to %s", len(events), spool_dir / SPOOL_FILE)


def _read_spool(path: Path) -> list[UsageEvent]:
    events: list[UsageEvent] = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                events.append(UsageEvent.from_row(json.loads(line)))
            except (ValueError, TypeError):
                # A line torn by a crash mid-write: the rest of the file still counts.
                log.error("skipping unreadable spool line %s:%d", path, n)
    return events


async def replay_spool(sb: AsyncClient, spool_dir: Path) -> int:
    """Record every spooled event, and every event of a dead meter's write-ahead log;
    returns how many were new to the ledger.

    The spool file is first renamed aside (so meters keep appending to a fresh one),
    then recorded; a file is deleted only once its events are in the ledger. A replay
    that fails leaves it for the next replay. Replays in one process take turns; a file
    another replay (another process on the same disk) took first is skipped, and one
    recorded by both counts once (ids are fixed).
    """
    async with _replay_lock():
        return await _replay(sb, Path(spool_dir))


async def _replay(sb: AsyncClient, spool_dir: Path) -> int:
    new = 0
    for path in await asyncio.to_thread(_files_to_replay, spool_dir):
        try:
            events = await asyncio.to_thread(_read_spool, path)
        except FileNotFoundError:
            continue  # replayed by another process meanwhile
        try:
            new += await record_usage_events(sb, events)
        except (DatabaseUnavailable, DatabaseError) as exc:
            log.warning("spool replay of %s failed (%s): kept for the next replay", path, exc)
            continue
        path.unlink(missing_ok=True)
        log.info("replayed %d spooled usage events from %s", len(events), path.name)
    for path in await asyncio.to_thread(dead_logs, spool_dir):
        try:
            events = await asyncio.to_thread(read_log, path)
        except FileNotFoundError:
            continue
        try:
            recorded = await record_usage_events(sb, events)
        except (DatabaseUnavailable, DatabaseError) as exc:
            log.warning("replay of the log %s failed (%s): kept for the next replay", path, exc)
            continue
        new += recorded
        await asyncio.to_thread(remove_if_dead, path)
        log.warning(
            "recorded %d usage events (%d new) from the log of a meter that died: %s",
            len(events),
            recorded,
            path.name,
        )
    return new
