"""The last step of every call, however it ended: its usage, its thread, its post-call.

:meth:`CallEnd.finish` runs once per call, in the call's task (the runner shields it
from cancellation): the recorder's pending usage is recorded, the WebRTC peer (if any)
closed, a phone call's leg metered, the meter closed (everything buffered goes to the
ledger or the spool), then the transcript and end time are saved. A call that ended
abnormally (or was cut short by a shutdown that could not wait) is ``failed``
(``error_stage`` ``call``, its code and message) and the failure hook is told; one that
ended normally (a draining instance's goodbye included) moves to ``processing`` and its
post-call step runs, then ``completed``. Each end is counted in the metrics, by its
reason.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flow import metrics
from flow.bot.contract import CallRequest, CallResult, OnFailed, PostCall
from flow.bot.pipeline import BotCall
from flow.bot.thread_writes import ThreadWrites
from flow.bot.twilio_stream import TelephonyLegs
from flow.bot.webrtc import WebRTCPeer
from flow.db.call_state import CallStatus, EndReason, ErrorStage
from flow.metering.meter import Meter

log = logging.getLogger(__name__)

SHUT_DOWN = "the service shut down"


@dataclass
class RunningCall:
    """One call a runner holds, from its submission to the end of its last step.

    Parameters:
        call: what the API submitted.
        task: the call's task.
        bot: the built pipeline (None until built).
        end_reason: why it ended, once something ended it.
        error: the message of a failure.
        error_code: the failure's ``error_code``, instead of the end reason's.
        peer: the caller's WebRTC peer, for a webrtc call.
        abrupt: a shutdown ended it at once, with no goodbye: it fails, with no
            post-call step.
    """

    call: CallRequest
    task: asyncio.Task[None] | None = None
    bot: BotCall | None = None
    end_reason: EndReason | None = None
    error: str | None = None
    error_code: str | None = None
    peer: WebRTCPeer | None = None
    abrupt: bool = False

    def over_budget(self, last_words: str) -> None:
        """Its budget guard's word: the next reply would cross the budget. The bot says
        ``last_words`` and hangs up (a call already ending is left to end)."""
        if self.end_reason is not None or self.bot is None:
            return
        self.end_reason = EndReason.BUDGET_EXHAUSTED
        goodbye = self.bot.hang_up_with(last_words)
        asyncio.get_running_loop().create_task(goodbye, name="budget-goodbye")

    def peer_failed(self) -> None:
        """The caller's WebRTC peer closed before it was established: the call fails."""
        self.end_reason, self.error_code = EndReason.ERROR, "webrtc_failed"
        self.error = "the caller's WebRTC connection closed before it was established"

    def unconnected(self, seconds: float) -> bool:
        """The connect timeout came: a caller whose peer is not up yet fails the call;
        answers whether it did (the call is then to be ended)."""
        if self.bot is None or self.bot.caller_joined or self.end_reason is not None:
            return False
        self.error_code = "webrtc_timeout"
        self.error = f"the caller's WebRTC connection was not up within {seconds:g} s"
        return True


class CallEnd:
    """The end of a runner's calls.

    Parameters:
        writes: the runner's thread writes.
        post_call: run with the thread ``processing`` after a call that ended normally.
        on_failed: told of a call that ended ``failed`` before its post-call step.
        legs: meters the leg of a phone call.
    """

    def __init__(
        self,
        writes: ThreadWrites,
        post_call: PostCall | None,
        on_failed: OnFailed | None,
        legs: TelephonyLegs | None = None,
    ) -> None:
        self.writes = writes
        self._post_call = post_call
        self._on_failed = on_failed
        self._legs = legs

    async def shut_down(self, ended: list[RunningCall]) -> None:
        """Mark failed the threads of calls a shutdown ended whose task could not (one
        cancelled in its last step); a finished thread stays as it is."""
        for running in ended:
            tid = running.call.workflow_thread_id
            await self.writes.fail(tid, ErrorStage.CALL, EndReason.SHUTDOWN, SHUT_DOWN)

    async def finish(self, running: RunningCall, meter: Meter, started_at: datetime) -> None:
        call = running.call
        tid = call.workflow_thread_id
        ended_at = datetime.now(UTC)
        reason = running.end_reason or EndReason.COMPLETED
        metrics.CALLS_ENDED.labels(str(reason)).inc()
        if running.bot is not None:
            metrics.CALL_DURATION.observe((ended_at - started_at).total_seconds())
        if running.bot is not None and running.bot.recorder is not None:
            running.bot.recorder.finish()
        if running.peer is not None:
            await running.peer.close()
        if self._legs is not None:
            self._legs.record(call, meter)
        try:
            await meter.close()
        except Exception:
            log.exception("call %s: closing the meter failed", tid)
        if self._legs is not None:
            await self._legs.settle(call)
        transcript = running.bot.transcript.to_json() if running.bot is not None else []
        result = CallResult(
            transcript=transcript,
            started_at=started_at,
            ended_at=ended_at,
            end_reason=reason,
            usage_events=meter.events,
        )
        end = {
            "transcript": transcript,
            "bot_ended_at": ended_at.isoformat(),
            "end_reason": str(reason),
        }
        try:
            await self._end_of(running, result, end)
        finally:
            self.writes.keep_if_unwritten(tid, end)

    async def _end_of(self, running: RunningCall, result: CallResult, end: dict[str, Any]) -> None:
        call = running.call
        tid = call.workflow_thread_id
        reason = result.end_reason
        await self.writes.update(tid, **end)
        if not reason.normal or running.abrupt:
            code = running.error_code or (
                "pipeline_error" if reason is EndReason.ERROR else str(reason)
            )
            message = running.error or f"the call ended: {reason}"
            await self.writes.fail(tid, ErrorStage.CALL, code, message)
            if self._on_failed is not None:
                try:
                    await self._on_failed(call, result)
                except Exception:
                    log.exception("call %s: the failure hook failed", tid)
            return
        if not await self.writes.move(tid, CallStatus.PROCESSING):
            return
        if self._post_call is not None:
            try:
                await self._post_call(call, result)
            except asyncio.CancelledError:
                await self.writes.fail(tid, ErrorStage.POST_CALL, EndReason.SHUTDOWN, SHUT_DOWN)
                raise
            except Exception as exc:
                log.exception("call %s: post-call step failed", tid)
                message = f"{exc.__class__.__name__}: {exc}"
                await self.writes.fail(tid, ErrorStage.POST_CALL, "post_call_failed", message)
                return
        # A post-call step usually settles the thread itself (completed, or failed at a
        # named step); this move is then refused, as every move of a finished call is.
        await self.writes.move(tid, CallStatus.COMPLETED)
