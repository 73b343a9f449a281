"""The meter: takes usage events off the call's frame path and gets them into the ledger.

``Meter.add`` is synchronous and never waits: it appends the event to the meter's
write-ahead log (:mod:`flow.metering.wal`, one ``write`` syscall, so a killed process
loses nothing), then to an in-memory buffer, and calls the listeners. A background
task flushes the buffer in batches through ``record_usage_events`` every
``FLOW_METER_FLUSH_SECONDS`` and ``close()`` flushes what is left at call end.

A flush that fails is retried with exponential backoff; when the database stays
unreachable the batch goes to the spool (:mod:`flow.metering.spool`), which is replayed
once the database is back. Every event keeps the id it was created with, so nothing is
counted twice however often a batch is retried or replayed.

Listeners are ``Callable[[UsageEvent], None]`` called synchronously, in order, for each
event as it is added (PostHog live capture hooks in here). They run on the frame path,
so they must not block; an exception in one is logged and swallowed, never lost usage.

Every usage event takes this road, whatever produced it: one :class:`Metering` per
process (database, price book, spool, listeners) opens a :class:`Meter` for each call's
pipeline and for the post-call insights step alike. Nothing writes the ledger behind it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from supabase import AsyncClient

from flow import metrics
from flow.config import Settings
from flow.db.client import DatabaseError
from flow.db.usage import record_usage_events
from flow.metering.events import UsageEvent
from flow.metering.pricing import PriceBook
from flow.metering.spool import append_to_spool
from flow.metering.wal import WriteAheadLog

log = logging.getLogger(__name__)

Listener = Callable[[UsageEvent], None]


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
        self._listeners = list(listeners)
        self._provisional_listeners: list[Listener] = []
        self._max_attempts = max(1, max_attempts)
        self._backoff_seconds = backoff_seconds
        self._buffer: list[UsageEvent] = []
        self._events: list[UsageEvent] = []
        self._task: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._closed = False
        self._wal: WriteAheadLog | None = None
        self.recorded = 0
        self.spooled = 0

    # --- the frame path ----------------------------------------------------------
    def add(self, event: UsageEvent) -> None:
        """Take one event: log it ahead, buffer it and tell the listeners."""
        if self._closed:
            # A late event (a metric flushed by a service after close) still counts:
            # keep it for the final flush that close() runs after this point.
            log.warning("usage event %s added after the meter closed", event.id)
        self._log_ahead(event, provisional=False)
        self._buffer.append(event)
        self._events.append(event)
        metrics.METER_BUFFERED.inc()
        metrics.usage_event(str(event.kind), event.model, event.cost_usd)
        self._tell(self._listeners, event)

    def provisional(self, event: UsageEvent) -> None:
        """Log usage that is being incurred but not reported yet (an LLM reply in
        progress, as an estimate): the write-ahead log and the provisional listeners see
        it. An event added later with the same id supersedes it; if the process dies
        first, the replay records it."""
        self._log_ahead(event, provisional=True)
        self._tell(self._provisional_listeners, event)

    def listen(self, listener: Listener, *, provisional: bool = False) -> None:
        """Tell ``listener`` of this meter's events from now on (and, with
        ``provisional``, of its provisional ones too): a call's own listeners, beside
        the process-wide ones. The same rules hold: it must not block."""
        self._listeners.append(listener)
        if provisional:
            self._provisional_listeners.append(listener)

    @staticmethod
    def _tell(listeners: Sequence[Listener], event: UsageEvent) -> None:
        for listener in listeners:
            try:
                listener(event)
            except Exception:
                log.exception("usage listener %r failed on event %s", listener, event.id)

    def _log_ahead(self, event: UsageEvent, *, provisional: bool) -> None:
        try:
            if self._wal is None:
                self._wal = WriteAheadLog(self._spool_dir)
            self._wal.append(event, provisional=provisional)
        except OSError:  # a full or read-only disk must not take the call down
            log.exception("could not log usage event %s ahead", event.id)

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
            metrics.METER_BUFFERED.dec(len(batch))

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
        """Stop the periodic flush and flush everything left, then drop the write-ahead
        log: every event is in the ledger or the spool. Idempotent."""
        self._closed = True
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            # Let a flush in progress finish (its retries included) rather than cut it.
            await asyncio.wait([task])
        await self.flush()
        if self._wal is not None and not self._buffer:
            self._wal.discard()
            self._wal = None


@dataclass(frozen=True)
class Metering:
    """What every meter of the process shares; build one per process.

    Parameters:
        sb: the supabase client the ledger is written through.
        prices: the process's price book (every event is priced with it).
        spool_dir: where usage waits while the database cannot be reached.
        flush_seconds: the longest an event waits in memory before a flush.
        listeners: told of every event as it is added (live analytics).
    """

    sb: AsyncClient
    prices: PriceBook
    spool_dir: Path
    flush_seconds: float = 1.0
    listeners: tuple[Listener, ...] = ()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        sb: AsyncClient,
        *,
        prices: PriceBook | None = None,
        listeners: Iterable[Listener] = (),
    ) -> Metering:
        return cls(
            sb=sb,
            prices=prices or PriceBook.from_settings(settings),
            spool_dir=Path(settings.flow_spool_dir),
            flush_seconds=settings.flow_meter_flush_seconds,
            listeners=tuple(listeners),
        )

    def meter(self) -> Meter:
        """A new meter (one per call, or per post-call step); start and close it."""
        return Meter(
            self.sb,
            spool_dir=self.spool_dir,
            flush_seconds=self.flush_seconds,
            listeners=self.listeners,
        )

    async def record(self, events: Sequence[UsageEvent]) -> Meter:
        """Record usage born outside a call's pipeline (the insights completion) the
        way a call's is: retried, then spooled, never lost. Returns the closed meter."""
        meter = self.meter()
        for event in events:
            meter.add(event)
        await meter.close()
        return meter
