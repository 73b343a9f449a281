"""Runs calls as asyncio tasks in the API process, and never loses their usage.

Each call moves its thread ``starting`` -> ``running`` -> ``processing`` ->
``completed``, or to ``failed`` with ``error_stage``/``error_code``/``error_message``.
At most ``FLOW_MAX_BOTS`` calls run at once (:class:`AtCapacity` beyond). A call ends
when its transport ends it (the caller hangs up, the script is done), on
:meth:`BotRunner.stop`, after ``FLOW_MAX_CALL_SECONDS``, after
``FLOW_IDLE_TIMEOUT_SECONDS`` without speech, on a fatal pipeline error, when its task
is cancelled, or on :meth:`BotRunner.shutdown` (SIGTERM).

However it ends, the call's meter is closed exactly once in the task's last step:
everything buffered goes to the ledger (or the spool), then the transcript is saved,
then the optional ``post_call`` hook runs while the thread is ``processing``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pipecat.workers.runner import WorkerRunner
from supabase import AsyncClient

from flow.bot.contract import AtCapacity, CallRequest
from flow.bot.pipeline import BotCall, ServicesFactory, build_call, default_services
from flow.bot.simulated import SimulatedParams
from flow.config import Settings
from flow.db import threads as threads_repo
from flow.metering.events import UsageEvent
from flow.metering.meter import Listener, Meter, replay_spool
from flow.metering.pricing import PriceBook

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
# How often usage spooled during a database outage is replayed while the service runs.
HOUSEKEEPING_SECONDS = 60.0
# Margin beyond FLOW_MAX_CALL_SECONDS after which an unfinished thread is abandoned.
ABANDONED_AFTER_SECONDS = 1800.0
# How often the runner asks the database whether another instance was asked to stop
# one of its calls (POST /api/bot/{id}/stop reached an instance not running it).
STOP_POLL_SECONDS = 1.0
# How long shutdown waits for cancelled calls to record their usage and finish.
SHUTDOWN_WAIT_SECONDS = 10.0

# end_reason values; the first group ends the call normally (post-call runs).
NORMAL_ENDS = ("completed", "stopped", "max_duration", "idle")


@dataclass
class CallResult:
    """What a finished call hands the post-call step.

    Parameters:
        transcript: the turns (``role``, ``content``, ``started_at``, ``ended_at``,
            ``interrupted``).
        started_at: when the pipeline started.
        ended_at: when it ended.
        end_reason: ``completed``, ``stopped``, ``max_duration``, ``idle``, ``error``,
            ``cancelled`` or ``shutdown``.
        usage_events: every usage event the call recorded.
    """

    transcript: list[dict[str, Any]]
    started_at: datetime
    ended_at: datetime
    end_reason: str
    usage_events: list[UsageEvent] = field(default_factory=list)


PostCall = Callable[[CallRequest, CallResult], Awaitable[None]]
# Told when a call ends in ``failed`` before its post-call step (error, cancellation,
# shutdown), so its trace and ``call.failed`` webhook still go out.
OnFailed = Callable[[CallRequest, CallResult], Awaitable[None]]


class _EndedWhileStarting(Exception):
    """Stop or shutdown arrived before the pipeline ran."""


@dataclass
class _Running:
    call: CallRequest
    task: asyncio.Task[None] | None = None
    bot: BotCall | None = None
    end_reason: str | None = None
    error: str | None = None


class BotRunner:
    """The in-process :class:`flow.bot.contract.CallRunner`."""

    def __init__(
        self,
        settings: Settings,
        sb: AsyncClient,
        *,
        post_call: PostCall | None = None,
        on_failed: OnFailed | None = None,
        listeners: Sequence[Listener] = (),
        services_factory: ServicesFactory | None = None,
        price_book: PriceBook | None = None,
        simulated: SimulatedParams | None = None,
        housekeeping_seconds: float = HOUSEKEEPING_SECONDS,
        stop_poll_seconds: float = STOP_POLL_SECONDS,
    ) -> None:
        self._settings = settings
        self._housekeeping_seconds = housekeeping_seconds
        self._stop_poll_seconds = stop_poll_seconds
        self._stop_watch_task: asyncio.Task[None] | None = None
        self._sb = sb
        self._post_call = post_call
        self._on_failed = on_failed
        self._listeners = tuple(listeners)
        self._services_factory = services_factory or default_services
        self._prices = price_book or PriceBook(settings.price_overrides(), settings.voice_prices())
        self._simulated = simulated
        self._calls: dict[str, _Running] = {}
        self._shutting_down = False
        self._replay_task: asyncio.Task[int] | None = None

    # --- CallRunner ----------------------------------------------------------------
    def has_capacity(self) -> bool:
        return not self._shutting_down and len(self._calls) < self._settings.flow_max_bots

    @property
    def active_calls(self) -> list[str]:
        return list(self._calls)

    async def submit(self, call: CallRequest) -> None:
        if not self.has_capacity() or call.workflow_thread_id in self._calls:
            raise AtCapacity(RETRY_AFTER_SECONDS)
        running = _Running(call)
        self._calls[call.workflow_thread_id] = running
        running.task = asyncio.create_task(
            self._run(running), name=f"call-{call.workflow_thread_id}"
        )
        # A task cancelled before its first step never runs its own cleanup.
        running.task.add_done_callback(lambda _t: self._calls.pop(call.workflow_thread_id, None))

    async def stop(self, workflow_thread_id: str) -> bool:
        running = self._calls.get(workflow_thread_id)
        if running is None:
            return False
        await self._end(running, "stopped")
        return True

    async def shutdown(self) -> None:
        """End every call, flush every meter, mark every unfinished thread failed."""
        self._shutting_down = True
        running = list(self._calls.values())
        for r in running:
            await self._end(r, "shutdown")
        tasks = [r.task for r in running if r.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_WAIT_SECONDS)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=SHUTDOWN_WAIT_SECONDS)
        # A call whose task could not even mark its thread (cancelled in its last step).
        for r in running:
            if r.task is not None and not r.task.done():
                continue
            await self._mark_failed(r.call, "call", "shutdown", "the service shut down")
        background: list[asyncio.Task[Any] | None] = [self._replay_task, self._stop_watch_task]
        for bg in background:
            if bg is not None and not bg.done():
                bg.cancel()

    async def wait(self, workflow_thread_id: str) -> None:
        """Wait for a call's task to finish (tests, the CLI demo)."""
        running = self._calls.get(workflow_thread_id)
        if running is not None and running.task is not None:
            await asyncio.wait([running.task])

    # --- spool -------------------------------------------------------------------------
    async def replay_spool(self) -> int:
        """Record usage a previous run spooled while the database was unreachable."""
        try:
            return await replay_spool(self._sb, self._settings.flow_spool_dir)
        except Exception:
            log.exception("spool replay failed; it is retried on the next start")
            return 0

    def start(self) -> None:
        """Start the background work (called by :func:`create_runner`): housekeeping
        now and every ``housekeeping_seconds``, and watching for stop requests made
        through other instances."""
        loop = asyncio.get_running_loop()
        if self._replay_task is None:
            self._replay_task = loop.create_task(self._housekeeping())
        if self._stop_watch_task is None:
            self._stop_watch_task = loop.create_task(self._watch_stop_requests())

    async def _watch_stop_requests(self) -> None:
        """End the calls another instance was asked to stop."""
        while not self._shutting_down:
            await asyncio.sleep(self._stop_poll_seconds)
            running = [tid for tid, r in self._calls.items() if r.end_reason is None]
            if not running:
                continue
            try:
                requested = await threads_repo.stop_requested(self._sb, running)
            except Exception:
                log.warning("could not check for stop requests; retrying", exc_info=True)
                continue
            for tid in requested:
                log.info("call %s: stop requested through another instance", tid)
                await self.stop(tid)

    async def _housekeeping(self) -> int:
        """Replay usage spooled during a database outage (it reaches the ledger once the
        database is back, without a restart), and fail the threads of calls whose
        instance died: no call outlives ``FLOW_MAX_CALL_SECONDS`` plus
        ``ABANDONED_AFTER_SECONDS`` of starting and post-call work, so an older
        unfinished thread has nobody running it."""
        replayed = 0
        while not self._shutting_down:
            replayed += await self.replay_spool()
            horizon = datetime.now(UTC) - timedelta(
                seconds=self._settings.flow_max_call_seconds + ABANDONED_AFTER_SECONDS
            )
            try:
                for tid in await threads_repo.fail_abandoned(self._sb, created_before=horizon):
                    log.warning("thread %s: its instance stopped; marked failed", tid)
            except Exception:
                log.warning("could not look for abandoned threads; retrying", exc_info=True)
            await asyncio.sleep(self._housekeeping_seconds)
        return replayed

    # --- one call ----------------------------------------------------------------------
    async def _end(self, running: _Running, reason: str) -> None:
        """End a call now. Cancelling the pipeline loses no usage: the tracker estimates
        a reply cut off mid-stream, and every stage's metrics flush on the CancelFrame."""
        if running.end_reason is None:
            running.end_reason = reason
        bot = running.bot
        if bot is None:
            # Still starting: the task checks end_reason before the pipeline runs.
            # (Cancelling it here could kill it before its first step, leaving the
            # thread unmarked.)
            return
        await bot.worker.cancel(reason=reason)

    async def _run(self, running: _Running) -> None:
        call = running.call
        tid = call.workflow_thread_id
        meter = Meter(
            self._sb,
            spool_dir=self._settings.flow_spool_dir,
            flush_seconds=self._settings.flow_meter_flush_seconds,
            listeners=self._listeners,
        )
        started_at = datetime.now(UTC)
        cancelled = False
        try:
            await self._status(tid, "starting", only_from=("pending", "starting"))
            services = self._services_factory(self._settings, call)
            simulated = SimulatedParams(**vars(self._simulated)) if self._simulated else None
            bot = build_call(
                call,
                self._settings,
                services=services,
                meter=meter,
                price_book=self._prices,
                simulated=simulated,
                idle_timeout_seconds=self._settings.flow_idle_timeout_seconds,
            )
            running.bot = bot
            self._watch(running, bot)
            meter.start()
            started_at = datetime.now(UTC)
            await self._status(tid, "running", bot_started_at=started_at.isoformat())
            await bot.greet()
            runner = WorkerRunner(handle_sigint=False)
            await runner.add_workers(bot.worker)
            limit = asyncio.get_running_loop().call_later(
                self._settings.flow_max_call_seconds,
                lambda: asyncio.ensure_future(self._end(running, "max_duration")),
            )
            try:
                if running.end_reason is not None:  # stopped while starting
                    raise _EndedWhileStarting
                await runner.run()
            finally:
                limit.cancel()
            this = asyncio.current_task()
            if this is not None and this.cancelling():
                # Pipecat's runner absorbs the cancellation; it is still ours.
                raise asyncio.CancelledError
            if running.error and running.end_reason is None:
                running.end_reason = "error"
        except _EndedWhileStarting:
            pass
        except asyncio.CancelledError:
            cancelled = True
            if running.end_reason is None:
                running.end_reason = "cancelled"
        except Exception as exc:
            log.exception("call %s failed", tid)
            running.end_reason = running.end_reason or "error"
            running.error = running.error or f"{exc.__class__.__name__}: {exc}"
        finally:
            # The last step runs to its end even if this task is cancelled again.
            finish = asyncio.ensure_future(self._finish(running, meter, started_at))
            try:
                await asyncio.shield(finish)
            except asyncio.CancelledError:
                cancelled = True
                await asyncio.wait([finish])
            self._calls.pop(tid, None)
        if cancelled:
            raise asyncio.CancelledError

    def _watch(self, running: _Running, bot: BotCall) -> None:
        @bot.worker.event_handler("on_idle_timeout")
        async def _idle(_worker: Any) -> None:
            if running.end_reason is None:
                running.end_reason = "idle"

        @bot.worker.event_handler("on_pipeline_error")
        async def _error(_worker: Any, frame: Any) -> None:
            running.error = running.error or str(getattr(frame, "error", frame))
            processor = getattr(frame, "processor", None)
            if getattr(frame, "fatal", False) or (
                processor is not None and not processor.is_usable
            ):
                if running.end_reason is None:
                    running.end_reason = "error"
                await bot.worker.cancel(reason="error")

    async def _finish(self, running: _Running, meter: Meter, started_at: datetime) -> None:
        call = running.call
        tid = call.workflow_thread_id
        ended_at = datetime.now(UTC)
        reason = running.end_reason or "completed"
        if running.bot is not None:
            running.bot.recorder.finish()
        try:
            await meter.close()
        except Exception:
            log.exception("call %s: closing the meter failed", tid)
        transcript = running.bot.transcript.to_json() if running.bot is not None else []
        result = CallResult(
            transcript=transcript,
            started_at=started_at,
            ended_at=ended_at,
            end_reason=reason,
            usage_events=meter.events,
        )
        await self._update(tid, transcript=transcript, bot_ended_at=ended_at.isoformat())
        if reason not in NORMAL_ENDS:
            code = {"error": "pipeline_error"}.get(reason, reason)
            message = running.error or f"the call ended: {reason}"
            await self._mark_failed(call, "call", code, message)
            if self._on_failed is not None:
                try:
                    await self._on_failed(call, result)
                except Exception:
                    log.exception("call %s: the failure hook failed", tid)
            return
        if not await self._status(tid, "processing", only_from=("running", "starting")):
            return
        if self._post_call is not None:
            try:
                await self._post_call(call, result)
            except asyncio.CancelledError:
                await self._mark_failed(call, "post_call", "shutdown", "the service shut down")
                raise
            except Exception as exc:
                log.exception("call %s: post-call step failed", tid)
                await self._mark_failed(
                    call, "post_call", "post_call_failed", f"{exc.__class__.__name__}: {exc}"
                )
                return
        await self._status(tid, "completed", only_from=("processing",))

    # --- thread updates that never take the call down ------------------------------------
    async def _status(self, tid: str, status: str, **kw: Any) -> bool:
        try:
            return await threads_repo.set_status(self._sb, tid, status, **kw)
        except Exception:
            log.exception("thread %s: could not set status %s", tid, status)
            return False

    async def _update(self, tid: str, **columns: Any) -> None:
        try:
            await threads_repo.update_thread(self._sb, tid, **columns)
        except Exception:
            log.exception("thread %s: could not save the call's end", tid)

    async def _mark_failed(self, call: CallRequest, stage: str, code: str, message: str) -> None:
        try:
            await threads_repo.set_status(
                self._sb,
                call.workflow_thread_id,
                "failed",
                only_from=("pending", "starting", "running", "processing"),
                error_stage=stage,
                error_code=code,
                error_message=message[:2000],
            )
        except Exception:
            log.exception("thread %s: could not mark it failed", call.workflow_thread_id)


def create_runner(
    settings: Settings,
    sb: AsyncClient,
    *,
    post_call: PostCall | None = None,
    on_failed: OnFailed | None = None,
    listeners: Sequence[Listener] = (),
    services_factory: ServicesFactory | None = None,
    simulated: SimulatedParams | None = None,
    housekeeping_seconds: float = HOUSEKEEPING_SECONDS,
    stop_poll_seconds: float = STOP_POLL_SECONDS,
) -> BotRunner:
    """The runner the API uses; replays the usage spool in the background when called
    with an event loop running (the API's lifespan)."""
    runner = BotRunner(
        settings,
        sb,
        post_call=post_call,
        on_failed=on_failed,
        listeners=listeners,
        services_factory=services_factory,
        simulated=simulated,
        housekeeping_seconds=housekeeping_seconds,
        stop_poll_seconds=stop_poll_seconds,
    )
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return runner
    runner.start()
    return runner
