"""The meter: takes usage events off the call's frame path and gets them into the ledger.

``Meter.add`` is synchronous and does no I/O: it appends the event to an in-memory
buffer and calls the listeners. A background task flushes the buffer in batches
through ``record_usage_events`` every ``FLOW_METER_FLUSH_SECONDS`` and ``close()``
flushes what is left at call end.

A flush that fails is retried with exponential backoff; when the database stays
unreachable the batch is appended to ``FLOW_SPOOL_DIR/usage.jsonl`` (one event row a
line, fsynced) and :func:`replay_spool` records it on the next start. Replaying twice,
or replaying a batch that did reach the database before the connection dropped, counts
nothing twice: every event keeps the id it was created with, and the ledger inserts an
id once.

Listeners are ``Callable[[UsageEvent], None]`` called synchronously, in order, for each
event as it is added (PostHog live capture hooks in here). They run on the frame path,
so they must not block; an exception in one is logged and swallowed, never lost usage.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from supabase import AsyncClient

from flow.db.client import DatabaseError, DatabaseUnavailable
from flow.db.usage import record_usage_events
from flow.metering.events import UsageEvent

log = logging.getLogger(__name__)

Listener = Callable[[UsageEvent], None]

SPOOL_FILE = "usage.jsonl"
REPLAY_SUFFIX = ".replaying"
# One lock for every meter in the process: appends from concurrent calls must not
# interleave inside a line.
_spool_lock = threading.Lock()


class Meter:
    """Buffers one call's usage events and records them exactly once.

    Parameters:
        sb: the supabase client the ledger is written through.
        spool_dir: where batches go when the database cannot be reached.
        flush_seconds: the longest an event waits in memory before a flush.
        listeners: called with each event as it is added (must not block).
        max_attempts: tries per flush before a batch is spooled.
        backoff_seconds: the first retry's delay, doubled each try.
    """

    def __init__(
        self,
        sb: AsyncClient,
        *,
        spool_dir: Path,
        flush_seconds: float = 1.0,
        listeners: Sequence[Listener] = (),
        max_attempts: int = 3,
        backoff_seconds: float = 0.2,
    ) -> None:
        self._sb = sb
        self._spool_dir = Path(spool_dir)
        self._flush_seconds = flush_seconds
        self._listeners = tuple(listeners)
        self._max_attempts = max(1, max_attempts)
        self._backoff_seconds = backoff_seconds
        self._buffer: list[UsageEvent] = []
        self._events: list[UsageEvent] = []
        self._task: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._closed = False
        self.recorded = 0
        self.spooled = 0

    # --- the frame path ----------------------------------------------------------
    def add(self, event: UsageEvent) -> None:
        """Take one event: buffer it and tell the listeners. No I/O."""
        if self._closed:
            # A late event (a metric flushed by a service after close) still counts:
            # keep it for the final flush that close() runs after this point.
            log.warning("usage event %s added after the meter closed", event.id)
        self._buffer.append(event)
        self._events.append(event)
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("usage listener %r failed on event %s", listener, event.id)

    @property
    def events(self) -> list[UsageEvent]:
        """Every event this meter has taken, in order."""
        return list(self._events)

    @property
    def pending(self) -> int:
        return len(self._buffer)

    # --- off the frame path ------------------------------------------------------
    def start(self) -> None:
        """Start the periodic flush (needs a running event loop)."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(
                self._flush_periodically(), name="meter-flush"
            )

    async def _flush_periodically(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=self._flush_seconds)
            except TimeoutError:
                pass
            try:
                await self.flush()
            except Exception:  # never let the flusher die: close() flushes again
                log.exception("meter flush failed")

    async def flush(self) -> None:
        """Record what is buffered: retry with backoff, then spool."""
        async with self._flush_lock:
            if not self._buffer:
                return
            batch, self._buffer = self._buffer, []
            try:
                await self._record_or_spool(batch)
            except BaseException:
                # Cancelled (or failed) before the batch was recorded or spooled: put it
                # back for the next flush. If it did reach the ledger, the retry inserts
                # nothing (ids are fixed).
                self._buffer[:0] = batch
                raise

    async def _record_or_spool(self, batch: list[UsageEvent]) -> None:
        delay = self._backoff_seconds
        for attempt in range(1, self._max_attempts + 1):
            try:
                await record_usage_events(self._sb, batch)
                self.recorded += len(batch)
                return
            except DatabaseError as exc:
                # Refused (not unreachable): retrying the same rows cannot help, but the
                # usage must not be lost either; the spool keeps it for a replay once
                # the cause is fixed.
                log.error("the ledger refused a usage batch (%s): spooling it", exc)
                break
            except Exception as exc:  # DatabaseUnavailable, or anything unforeseen
                log.warning(
                    "usage flush attempt %d/%d failed: %s", attempt, self._max_attempts, exc
                )
            if attempt < self._max_attempts:
                await asyncio.sleep(delay)
                delay *= 2
        await asyncio.to_thread(append_to_spool, self._spool_dir, batch)
        self.spooled += len(batch)

    async def close(self) -> None:
        """Stop the periodic flush and flush everything left. Idempotent."""
        self._closed = True
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            # Let a flush in progress finish (its retries included) rather than cut it.
            await asyncio.wait([task])
        await self.flush()


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
    """Record every spooled event; returns how many were new to the ledger.

    The spool file is first renamed aside (so meters keep appending to a fresh one),
    then recorded; a file is deleted only once its events are in the ledger. A replay
    that fails leaves it for the next start.
    """
    spool_dir = Path(spool_dir)
    if not spool_dir.exists():
        return 0
    live = spool_dir / SPOOL_FILE
    with _spool_lock:
        if live.exists() and live.stat().st_size > 0:
            live.rename(spool_dir / f"usage.{time.time_ns()}.jsonl{REPLAY_SUFFIX}")
    new = 0
    for path in sorted(spool_dir.glob(f"*{REPLAY_SUFFIX}")):
        events = await asyncio.to_thread(_read_spool, path)
        try:
            new += await record_usage_events(sb, events)
        except (DatabaseUnavailable, DatabaseError) as exc:
            log.warning("spool replay of %s failed (%s): kept for the next start", path, exc)
            continue
        path.unlink()
        log.info("replayed %d spooled usage events from %s", len(events), path.name)
    return new
