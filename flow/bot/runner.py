"""Runs calls as asyncio tasks in the API process, and never loses their usage.

Each call moves its thread ``starting`` -> ``running`` -> ``processing`` ->
``completed``, or to ``failed`` with ``error_stage``/``error_code``/``error_message``.
At most ``FLOW_MAX_BOTS`` calls run at once (:class:`AtCapacity` beyond; a WebRTC peer
answered for a call not yet submitted counts as one). A call ends when its transport
ends it (the caller hangs up, the script is done), on :meth:`BotRunner.stop`, when its
next reply would cross its budget (after ``FLOW_BUDGET_GOODBYE``;
:mod:`flow.bot.budget_guard`), after ``FLOW_MAX_CALL_SECONDS``, after
``FLOW_IDLE_TIMEOUT_SECONDS`` without speech, on a fatal pipeline error, when its task
is cancelled, with a goodbye when a draining instance's time is up
(:meth:`BotRunner.hang_up`, :mod:`flow.bot.drain`), or at once on
:meth:`BotRunner.shutdown` (failed, ``shutdown``). A WebRTC call whose caller's peer
is not connected within ``FLOW_WEBRTC_CONNECT_TIMEOUT_SECONDS`` fails
(``webrtc_timeout``), as does one whose peer closes before it connects
(``webrtc_failed``).

However it ends, the call's meter is closed exactly once in the task's last step
(:mod:`flow.bot.call_end`): everything buffered goes to the ledger (or the spool), then
the transcript is saved, then the optional ``post_call`` hook runs while the thread is
``processing``. Status moves go through :mod:`flow.db.call_state`, which refuses to
move a finished call.

This module is one call's lifecycle; the work the instance does for all its calls
(spool replay, abandoned threads, stop requests from other instances) is in
:mod:`flow.bot.instance`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from pipecat.workers.runner import WorkerRunner
from supabase import AsyncClient

from flow import metrics
from flow.bot.assemble import assemble_call
from flow.bot.budget_guard import AlertsHook, BudgetGuard
from flow.bot.call_end import SHUT_DOWN, CallEnd, RunningCall
from flow.bot.contract import (
    AtCapacity,
    CallRequest,
    IceCandidate,
    OnFailed,
    PostCall,
    WebRTCAnswer,
    WebRTCOffer,
)
from flow.bot.instance import HOUSEKEEPING_SECONDS, STOP_POLL_SECONDS, InstanceJobs
from flow.bot.services import ServicesFactory, default_services
from flow.bot.simulated import SimulatedParams
from flow.bot.thread_writes import ThreadWrites
from flow.bot.twilio_stream import TelephonyLegs
from flow.bot.webrtc import WaitingPeers, answer_offer
from flow.config import Settings
from flow.db.call_state import CallStatus, EndReason
from flow.logs import bind
from flow.metering.meter import Listener, Metering

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
# How long shutdown waits for cancelled calls to record their usage and finish.
SHUTDOWN_WAIT_SECONDS = 10.0


class _EndedWhileStarting(Exception):
    """Stop or shutdown arrived before the pipeline ran."""


class BotRunner:
    """The in-process :class:`flow.bot.contract.CallRunner`.

    Parameters:
        settings: service settings.
        sb: the database client.
        metering: the process's metering (price book, spool, listeners); each call
            gets a meter from it.
        post_call: run with the thread ``processing`` after a call that ended normally.
        on_failed: told of a call that ended ``failed`` before its post-call step.
        services_factory: the vendors of a call (default: from settings).
        simulated: parameters of the simulated transport's scripted caller.
        jobs: the instance-wide jobs, started by :meth:`start` and stopped on shutdown.
        on_budget_alerts: given the budget alerts a call's guard claimed, to send.
    """

    def __init__(
        self,
        settings: Settings,
        sb: AsyncClient,
        *,
        metering: Metering,
        post_call: PostCall | None = None,
        on_failed: OnFailed | None = None,
        services_factory: ServicesFactory | None = None,
        simulated: SimulatedParams | None = None,
        jobs: InstanceJobs | None = None,
        on_budget_alerts: AlertsHook | None = None,
    ) -> None:
        self._settings = settings
        self._sb = sb
        self._metering = metering
        self._services_factory = services_factory or default_services
        self._simulated = simulated
        self._calls: dict[str, RunningCall] = {}
        self._waiting = WaitingPeers(settings.flow_webrtc_connect_timeout_seconds)
        self._shutting_down = False
        self._draining = False
        self.jobs = jobs
        self.writes = ThreadWrites(sb)
        self.ending = CallEnd(
            self.writes, post_call, on_failed, legs=TelephonyLegs(sb, metering.prices)
        )
        self._on_budget_alerts = on_budget_alerts

    # --- CallRunner ----------------------------------------------------------------
    def has_capacity(self) -> bool:
        return not self._draining and self._room()

    def _room(self) -> bool:
        # A join already past the door when the drain began still gets its call.
        held = len(self._calls) + len(self._waiting)
        return not self._shutting_down and held < self._settings.flow_max_bots

    @property
    def active_calls(self) -> list[str]:
        return list(self._calls)

    async def submit(self, call: CallRequest) -> None:
        peer = self._waiting.take(call.workflow_thread_id)
        full = not self._room() or call.workflow_thread_id in self._calls
        unanswered = (call.transport == "webrtc") != (peer is not None)
        if full or unanswered:
            if peer is not None:
                await peer.close()
            if unanswered:
                raise ValueError("a webrtc call is submitted after answer_webrtc, and only it")
            raise AtCapacity(RETRY_AFTER_SECONDS)
        running = RunningCall(call, peer=peer)
        self._calls[call.workflow_thread_id] = running
        metrics.CALLS_LIVE.inc()
        running.task = asyncio.create_task(
            self._run(running), name=f"call-{call.workflow_thread_id}"
        )
        running.task.add_done_callback(lambda _t: self._release(call.workflow_thread_id))

    def _release(self, tid: str) -> None:
        # A task cancelled before its first step never runs its own cleanup.
        self._calls.pop(tid, None)
        metrics.CALLS_LIVE.dec()

    async def answer_webrtc(self, workflow_thread_id: str, offer: WebRTCOffer) -> WebRTCAnswer:
        tid = workflow_thread_id
        if not self.has_capacity() or tid in self._calls or self._waiting.get(tid):
            raise AtCapacity(RETRY_AFTER_SECONDS)
        peer = await answer_offer(offer, self._settings)
        if self._shutting_down:
            await peer.close()
            raise AtCapacity(RETRY_AFTER_SECONDS)
        self._waiting.add(tid, peer)
        return peer.answer

    async def release_webrtc(self, workflow_thread_id: str) -> None:
        if (peer := self._waiting.take(workflow_thread_id)) is not None:
            await peer.close()

    async def add_ice_candidates(
        self, workflow_thread_id: str, candidates: list[IceCandidate]
    ) -> bool:
        running = self._calls.get(workflow_thread_id)
        peer = running.peer if running else self._waiting.get(workflow_thread_id)
        if peer is None:
            return False
        await peer.add_candidates(candidates)
        return True

    async def stop(self, workflow_thread_id: str) -> bool:
        running = self._calls.get(workflow_thread_id)
        if running is None:
            return False
        await self._end(running, EndReason.STOPPED)
        return True

    def stop_taking_calls(self) -> None:
        """Refuse every new call from now on (the instance drains)."""
        self._draining = True

    async def hang_up(self, goodbye: str) -> None:
        """Have the bot say ``goodbye`` on every live call, then end it (end reason
        ``shutdown``; its post-call step runs as after any call)."""
        self._shutting_down = True
        for running in list(self._calls.values()):
            bot = running.bot
            if running.end_reason is not None or (bot is not None and bot.worker.has_finished()):
                continue  # ending already, or in its post-call step
            running.end_reason = EndReason.SHUTDOWN
            if bot is not None:  # else it ends before its pipeline runs
                await bot.hang_up_with(goodbye)

    async def shutdown(self) -> None:
        """End every call at once, flush every meter, mark every unfinished thread
        failed (a call already hanging up with a goodbye is only cut short)."""
        self._shutting_down = True
        await self._waiting.close()
        running = list(self._calls.values())
        for r in running:
            if r.end_reason is None:
                r.abrupt, r.error = True, SHUT_DOWN
            await self._end(r, EndReason.SHUTDOWN)
        tasks = [r.task for r in running if r.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_WAIT_SECONDS)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=SHUTDOWN_WAIT_SECONDS)
        await self.ending.shut_down([r for r in running if r.task is None or r.task.done()])
        if self.jobs is not None:
            await self.jobs.stop()

    async def wait(self, workflow_thread_id: str) -> None:
        """Wait for a call's task to finish (tests, the CLI demo)."""
        running = self._calls.get(workflow_thread_id)
        if running is not None and running.task is not None:
            await asyncio.wait([running.task])

    def start(self) -> None:
        """Start the instance-wide jobs (needs a running event loop)."""
        if self.jobs is not None:
            self.jobs.start()

    def running_calls(self) -> list[str]:
        """The calls this instance runs that have not been asked to end yet."""
        return [tid for tid, r in self._calls.items() if r.end_reason is None]

    def held_calls(self) -> list[str]:
        """Every call this instance holds: until its post-call step is over, and until
        its end is written."""
        return [*self._calls, *self.writes.unsettled]

    @property
    def instance_id(self) -> str | None:
        return self.jobs.instance_id if self.jobs is not None else None

    # --- one call ----------------------------------------------------------------------
    async def _end(self, running: RunningCall, reason: EndReason) -> None:
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

    async def _run(self, running: RunningCall) -> None:
        call = running.call
        tid = call.workflow_thread_id
        bind(thread_id=tid, key_id=call.api_key_id)
        meter = self._metering.meter()
        started_at = datetime.now(UTC)
        cancelled = False
        guard: BudgetGuard | None = None
        try:
            await self.writes.move(tid, CallStatus.STARTING, instance_id=self.instance_id)
            bot, guard = assemble_call(
                self._settings,
                self._sb,
                running,
                meter,
                self._metering,
                services_factory=self._services_factory,
                simulated=self._simulated,
                on_alerts=self._on_budget_alerts,
            )
            running.bot = bot
            bot.transcript.on_turn = lambda: self.writes.save_transcript_soon(
                tid, bot.transcript.to_json
            )
            if running.peer is not None and running.peer.closed:
                running.peer_failed()  # before the transport could hear of it
            meter.start()
            if guard is not None:
                guard.start()
            started_at = datetime.now(UTC)
            await self.writes.move(tid, CallStatus.RUNNING, bot_started_at=started_at.isoformat())
            await bot.greet()
            runner = WorkerRunner(handle_sigint=False)
            await runner.add_workers(bot.worker)
            loop = asyncio.get_running_loop()
            limits = [
                loop.call_later(
                    self._settings.flow_max_call_seconds,
                    lambda: asyncio.ensure_future(self._end(running, EndReason.MAX_DURATION)),
                )
            ]
            if running.peer is not None:
                limits.append(
                    loop.call_later(
                        self._settings.flow_webrtc_connect_timeout_seconds,
                        lambda: asyncio.ensure_future(self._unconnected(running)),
                    )
                )
            try:
                if running.end_reason is not None:  # stopped while starting
                    raise _EndedWhileStarting
                await runner.run()
            finally:
                for limit in limits:
                    limit.cancel()
            this = asyncio.current_task()
            if this is not None and this.cancelling():
                # Pipecat's runner absorbs the cancellation; it is still ours.
                raise asyncio.CancelledError
            if running.peer is not None and not bot.caller_joined and running.end_reason is None:
                running.peer_failed()
            if running.error and running.end_reason is None:
                running.end_reason = EndReason.ERROR
        except _EndedWhileStarting:
            pass
        except asyncio.CancelledError:
            cancelled = True
            if running.end_reason is None:
                running.end_reason = EndReason.CANCELLED
        except Exception as exc:
            log.exception("call %s failed", tid)
            running.end_reason = running.end_reason or EndReason.ERROR
            running.error = running.error or f"{exc.__class__.__name__}: {exc}"
        finally:
            if guard is not None:
                await guard.stop()
            # The last step runs to its end even if this task is cancelled again.
            finish = asyncio.ensure_future(self.ending.finish(running, meter, started_at))
            try:
                await asyncio.shield(finish)
            except asyncio.CancelledError:
                cancelled = True
                await asyncio.wait([finish])
            self._calls.pop(tid, None)
        if cancelled:
            raise asyncio.CancelledError

    async def _unconnected(self, running: RunningCall) -> None:
        if running.unconnected(self._settings.flow_webrtc_connect_timeout_seconds):
            await self._end(running, EndReason.ERROR)


def create_runner(
    settings: Settings,
    sb: AsyncClient,
    *,
    metering: Metering | None = None,
    post_call: PostCall | None = None,
    on_failed: OnFailed | None = None,
    listeners: Sequence[Listener] = (),
    services_factory: ServicesFactory | None = None,
    simulated: SimulatedParams | None = None,
    housekeeping_seconds: float = HOUSEKEEPING_SECONDS,
    stop_poll_seconds: float = STOP_POLL_SECONDS,
    instance_id: str | None = None,
    on_budget_alerts: AlertsHook | None = None,
) -> BotRunner:
    """The runner the API uses, with its instance jobs; they start at once when called
    with an event loop running (the API's lifespan). Without ``metering`` one is built
    from settings over ``sb`` with ``listeners``."""
    runner = BotRunner(
        settings,
        sb,
        metering=metering or Metering.from_settings(settings, sb, listeners=listeners),
        post_call=post_call,
        on_failed=on_failed,
        services_factory=services_factory,
        simulated=simulated,
        on_budget_alerts=on_budget_alerts,
    )
    runner.jobs = InstanceJobs(
        sb,
        spool_dir=settings.flow_spool_dir,
        max_call_seconds=settings.flow_max_call_seconds,
        running_calls=runner.running_calls,
        stop_call=runner.stop,
        held_calls=runner.held_calls,
        settle_calls=runner.writes.settle,
        housekeeping_seconds=housekeeping_seconds,
        stop_poll_seconds=stop_poll_seconds,
        stale_seconds=settings.flow_instance_stale_seconds,
        instance_id=instance_id,
    )
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return runner
    runner.start()
    return runner
