"""The export scheduler inside ``flow serve``: an asyncio task that, every
``FLOW_SYNC_TICK_SECONDS``, syncs the integrations whose ``next_sync_at`` has come, then
reads how far every integration is behind the ledger (``flow_export_lag_rows``,
``flow_export_lag_seconds``).

It only claims what is due, through the database lease, so any number of Flow instances
can run it side by side. ``wake()`` runs a tick now (the API's "sync now"). ``stop()``
lets a cycle in progress finish (at most ``grace_seconds``) before it stops: what a
cycle sent is recorded as exported, and its lease is released rather than left to
expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from flow import metrics
from flow.db import exports as exports_db
from flow.exporters.sync import Exporter

log = logging.getLogger(__name__)

# How long stop() lets a cycle in progress finish before cancelling it.
STOP_GRACE_SECONDS = 20.0


class SyncScheduler:
    def __init__(self, exporter: Exporter, tick_seconds: float) -> None:
        self.exporter = exporter
        self.tick_seconds = tick_seconds
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="flow-export-scheduler")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            _, pending = await asyncio.wait([self._task], timeout=grace_seconds)
            if pending:
                log.warning(
                    "export cycle still running after %.0fs: interrupting it", grace_seconds
                )
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.exporter.aclose()

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                await self.exporter.run_due()
            except asyncio.CancelledError:
                raise
            except Exception:  # the scheduler must outlive any one bad cycle
                log.exception("export scheduler tick failed")
            await self.measure_lag()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick_seconds)
            self._wake.clear()

    async def measure_lag(self) -> None:
        try:
            metrics.export_lag(await exports_db.export_lag(self.exporter.sb))
        except Exception:
            log.warning("could not read the export lag", exc_info=True)
