"""The export scheduler inside ``flow serve``: an asyncio task that, every
``FLOW_SYNC_TICK_SECONDS``, syncs the integrations whose ``next_sync_at`` has come.

It only claims what is due, through the database lease, so any number of Flow instances
can run it side by side. ``wake()`` runs a tick now (the API's "sync now").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from flow.exporters.sync import Exporter

log = logging.getLogger(__name__)


class SyncScheduler:
    def __init__(self, exporter: Exporter, tick_seconds: float) -> None:
        self.exporter = exporter
        self.tick_seconds = tick_seconds
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="flow-export-scheduler")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.exporter.aclose()

    async def _loop(self) -> None:
        while True:
            try:
                await self.exporter.run_due()
            except asyncio.CancelledError:
                raise
            except Exception:  # the scheduler must outlive any one bad cycle
                log.exception("export scheduler tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick_seconds)
            self._wake.clear()
