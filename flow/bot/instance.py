"""The work an instance does for all its calls at once, beside any one call's lifecycle.

- **Spool replay**: usage spooled during a database outage reaches the ledger once the
  database is back, at start and every ``housekeeping_seconds``, without a restart.
- **Abandoned calls**: no call outlives ``FLOW_MAX_CALL_SECONDS`` plus
  :data:`ABANDONED_AFTER_SECONDS` of starting and post-call work, so an older unfinished
  thread has nobody running it (its instance died): it is marked ``failed``
  (``instance_lost``).
- **Stop requests**: ``POST /api/bot/{id}/stop`` may reach an instance that is not
  running the call; it records the request in the database and the instance running
  the call picks it up here within ``stop_poll_seconds``.

Failure behaviour: every job logs and retries on its next round when the database
cannot be reached; none of them can take a call down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from supabase import AsyncClient

from flow.db import call_state
from flow.db import threads as threads_repo
from flow.metering.spool import replay_spool

log = logging.getLogger(__name__)

HOUSEKEEPING_SECONDS = 60.0
# Margin beyond FLOW_MAX_CALL_SECONDS after which an unfinished thread is abandoned.
ABANDONED_AFTER_SECONDS = 1800.0
STOP_POLL_SECONDS = 1.0


class InstanceJobs:
    """The instance-wide background jobs of one process.

    Parameters:
        sb: the database client.
        spool_dir: the usage spool to replay.
        max_call_seconds: ``FLOW_MAX_CALL_SECONDS``.
        running_calls: the ids of the calls this instance runs and has not yet ended.
        stop_call: ends one of them (the runner's ``stop``).
        housekeeping_seconds: how often the spool is replayed and abandoned calls failed.
        stop_poll_seconds: how often stop requests are looked for.
    """

    def __init__(
        self,
        sb: AsyncClient,
        *,
        spool_dir: Path,
        max_call_seconds: float,
        running_calls: Callable[[], list[str]],
        stop_call: Callable[[str], Awaitable[bool]],
        housekeeping_seconds: float = HOUSEKEEPING_SECONDS,
        stop_poll_seconds: float = STOP_POLL_SECONDS,
    ) -> None:
        self._sb = sb
        self._spool_dir = Path(spool_dir)
        self._max_call_seconds = max_call_seconds
        self._running_calls = running_calls
        self._stop_call = stop_call
        self._housekeeping_seconds = housekeeping_seconds
        self._stop_poll_seconds = stop_poll_seconds
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start every job (needs a running event loop). Idempotent."""
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._housekeeping(), name="flow-housekeeping"),
            loop.create_task(self._watch_stop_requests(), name="flow-stop-requests"),
        ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def replay_spool(self) -> int:
        """Record what the spool holds; returns how many events were new."""
        try:
            return await replay_spool(self._sb, self._spool_dir)
        except Exception:
            log.exception("spool replay failed; it is retried on the next round")
            return 0

    async def fail_abandoned(self) -> list[str]:
        horizon = datetime.now(UTC) - timedelta(
            seconds=self._max_call_seconds + ABANDONED_AFTER_SECONDS
        )
        try:
            failed = await call_state.fail_abandoned(self._sb, created_before=horizon)
        except Exception:
            log.warning("could not look for abandoned threads; retrying", exc_info=True)
            return []
        for tid in failed:
            log.warning("thread %s: its instance stopped; marked failed", tid)
        return failed

    async def _housekeeping(self) -> None:
        while True:
            await self.replay_spool()
            await self.fail_abandoned()
            await asyncio.sleep(self._housekeeping_seconds)

    async def _watch_stop_requests(self) -> None:
        while True:
            await asyncio.sleep(self._stop_poll_seconds)
            running = self._running_calls()
            if not running:
                continue
            try:
                requested = await threads_repo.stop_requested(self._sb, running)
            except Exception:
                log.warning("could not check for stop requests; retrying", exc_info=True)
                continue
            for tid in requested:
                log.info("call %s: stop requested through another instance", tid)
                await self._stop_call(tid)
