"""The work an instance does for all its calls at once, beside any one call's lifecycle.

- **Identity and heartbeat**: the instance has an id (host, pid, random suffix) that
  every call it runs records (``workflow_threads.instance_id``), and it beats in
  ``flow_instances`` every third of ``FLOW_INSTANCE_STALE_SECONDS``.
- **Lost calls**: at each beat, the unfinished calls of instances that stopped beating
  (killed, host lost), and this instance's own calls that it no longer runs (their
  end could not be written during a database blip), are failed (``instance_lost``):
  within ``FLOW_INSTANCE_STALE_SECONDS`` plus one beat (a third of it) of the last beat
  of their instance, when any instance is live. ``calls_ended`` is told of the calls
  this instance failed (only those: the update that fails them returns each to one
  instance), so their ``call.failed`` webhook is sent once.
- **Usage replay**: usage spooled during a database outage, and the write-ahead logs of
  meters whose process died, reach the ledger at start and every
  ``housekeeping_seconds``, without a restart.
- **Abandoned calls**: threads no instance ever took (no ``instance_id``) are failed
  once older than ``FLOW_MAX_CALL_SECONDS`` plus :data:`ABANDONED_AFTER_SECONDS`
  (``calls_ended`` is told of them too, and of the calls whose late end is settled).
- **Sweeps**: what other parts ask to run every round (the call webhooks that were
  never marked sent, :meth:`flow.workflows.webhook.CallWebhooks.sweep`; the console's
  period, kept once a day, :class:`flow.billing.reports.ConsoleSpan`).
- **Stop requests**: ``POST /api/bot/{id}/stop`` may reach an instance that is not
  running the call; it records the request in the database and the instance running
  the call picks it up here within ``stop_poll_seconds``.

Failure behaviour: every job logs and retries on its next round when the database
cannot be reached; none of them can take a call down.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from supabase import AsyncClient

from flow.db import call_state, instances
from flow.db import threads as threads_repo
from flow.metering.spool import replay_spool

log = logging.getLogger(__name__)

HOUSEKEEPING_SECONDS = 60.0
# Margin beyond FLOW_MAX_CALL_SECONDS after which an unfinished thread is abandoned.
ABANDONED_AFTER_SECONDS = 1800.0
STOP_POLL_SECONDS = 1.0
STALE_SECONDS = 30
# The calls the database ended without their instance (their webhooks are sent).
CallsEnded = Callable[[Iterable[str]], None]
GONE_TIMEOUT_SECONDS = 3.0


def new_instance_id() -> str:
    return f"{socket.gethostname()[:100]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class InstanceJobs:
    """The instance-wide background jobs of one process.

    Parameters:
        sb: the database client.
        spool_dir: the usage spool to replay.
        max_call_seconds: ``FLOW_MAX_CALL_SECONDS``.
        running_calls: the ids of the calls this instance runs and has not yet ended.
        stop_call: ends one of them (the runner's ``stop``).
        held_calls: every call this instance still holds (post-call steps included).
        settle_calls: writes the end of calls whose end could not be written.
        housekeeping_seconds: how often the spool is replayed and abandoned calls failed.
        stop_poll_seconds: how often stop requests are looked for.
        stale_seconds: ``FLOW_INSTANCE_STALE_SECONDS``.
        instance_id: this instance's id (a new one by default).
        calls_ended: told of the calls this instance ended for an instance that could
            not (lost, abandoned, settled late); never blocks.
    """

    def __init__(
        self,
        sb: AsyncClient,
        *,
        spool_dir: Path,
        max_call_seconds: float,
        running_calls: Callable[[], list[str]],
        stop_call: Callable[[str], Awaitable[bool]],
        held_calls: Callable[[], list[str]] | None = None,
        settle_calls: Callable[[], Awaitable[list[str]]] | None = None,
        housekeeping_seconds: float = HOUSEKEEPING_SECONDS,
        stop_poll_seconds: float = STOP_POLL_SECONDS,
        stale_seconds: int = STALE_SECONDS,
        instance_id: str | None = None,
        calls_ended: CallsEnded | None = None,
    ) -> None:
        self.instance_id = instance_id or new_instance_id()
        self.calls_ended = calls_ended
        # Run at every housekeeping round beside the instance's own (the call webhooks'
        # sweep); each logs its own failures.
        self.sweeps: list[Callable[[], Awaitable[object]]] = []
        self.stale_seconds = stale_seconds
        self._held_calls = held_calls or running_calls
        self._settle_calls = settle_calls
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
            loop.create_task(self._beat(), name="flow-heartbeat"),
            loop.create_task(self._housekeeping(), name="flow-housekeeping"),
            loop.create_task(self._watch_stop_requests(), name="flow-stop-requests"),
        ]

    async def stop(self) -> None:
        """Stop every job; the instance leaves ``flow_instances`` (its calls are over)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
            try:
                await asyncio.wait_for(
                    instances.gone(self._sb, self.instance_id), GONE_TIMEOUT_SECONDS
                )
            except Exception:  # its heartbeat goes stale: the same outcome, later
                log.warning("could not sign instance %s off", self.instance_id)

    async def beat(self) -> list[str]:
        """One heartbeat, then fail the calls nobody runs; returns their ids."""
        if self._settle_calls is not None:
            try:
                self._ended(await self._settle_calls())
            except Exception:
                log.warning("could not settle calls; retrying", exc_info=True)
        try:
            await instances.heartbeat(
                self._sb, self.instance_id, socket.gethostname()[:255], os.getpid()
            )
            lost = await call_state.fail_lost_calls(
                self._sb,
                instance_id=self.instance_id,
                running=self._held_calls(),
                stale_seconds=self.stale_seconds,
            )
        except Exception:
            log.warning("heartbeat failed; retrying", exc_info=True)
            return []
        return self._failed_here(lost, "no instance runs it any more")

    def _failed_here(self, thread_ids: list[str], why: str) -> list[str]:
        """Calls this instance failed for another: logged, and told of (their webhook)."""
        for tid in thread_ids:
            log.warning("call %s: %s; marked failed", tid, why)
        self._ended(thread_ids)
        return thread_ids

    def _ended(self, thread_ids: list[str]) -> None:
        if thread_ids and self.calls_ended is not None:
            try:
                self.calls_ended(thread_ids)
            except Exception:
                log.exception("could not tell of the calls ended here")

    @staticmethod
    def heartbeat_seconds(stale_seconds: float) -> float:
        """The period of the heartbeat: a third of ``FLOW_INSTANCE_STALE_SECONDS``."""
        return max(0.5, stale_seconds / 3)

    async def _beat(self) -> None:
        while True:
            await self.beat()
            await asyncio.sleep(self.heartbeat_seconds(self.stale_seconds))

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
        return self._failed_here(failed, "its instance stopped")

    async def _housekeeping(self) -> None:
        while True:
            await self.replay_spool()
            await self.fail_abandoned()
            for sweep in self.sweeps:
                try:
                    await sweep()
                except Exception:
                    log.exception("a housekeeping sweep failed; it runs again next round")
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
