"""A call's state: its statuses, why it ended, and every move between statuses.

::

    pending [-> ringing] -> starting -> running -> processing -> completed
       \\__________\\__________\\__________\\___________\\-------> failed

A phone call Flow places is ``ringing`` until the callee answers and its media arrives.

This module is the only writer of ``workflow_threads.status``. Each move is one
conditional ``UPDATE ... WHERE status IN (<the statuses it may come from>)``, so it is
atomic and a late writer can never move a finished call: a ``failed`` call stays
failed, a ``completed`` one stays completed, whoever tries to change it afterwards.
Every move answers whether it happened.

Failure behaviour: the database errors of :mod:`flow.db.client` propagate
(``DatabaseUnavailable``, ``DatabaseError``); callers decide whether to retry.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from supabase import AsyncClient

from flow.db.client import call, rows_of

ERROR_MESSAGE_MAX_CHARS = 2000


class CallStatus(StrEnum):
    """``workflow_threads.status`` (the SQL check lists the same values)."""

    PENDING = "pending"
    RINGING = "ringing"
    STARTING = "starting"
    RUNNING = "running"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in FINISHED


ACTIVE: tuple[CallStatus, ...] = (
    CallStatus.PENDING,
    CallStatus.RINGING,
    CallStatus.STARTING,
    CallStatus.RUNNING,
    CallStatus.PROCESSING,
)
FINISHED: tuple[CallStatus, ...] = (CallStatus.COMPLETED, CallStatus.FAILED)
# A bot is (or is about to be) connected: a stop request can reach it.
LIVE: tuple[CallStatus, ...] = (CallStatus.STARTING, CallStatus.RUNNING)

# Where each status may be reached from; ``failed`` may be reached from any active one.
ALLOWED_FROM: dict[CallStatus, tuple[CallStatus, ...]] = {
    CallStatus.RINGING: (CallStatus.PENDING,),
    CallStatus.STARTING: (CallStatus.PENDING, CallStatus.RINGING, CallStatus.STARTING),
    CallStatus.RUNNING: (CallStatus.STARTING,),
    CallStatus.PROCESSING: (CallStatus.STARTING, CallStatus.RUNNING),
    CallStatus.COMPLETED: (CallStatus.PROCESSING,),
    CallStatus.FAILED: ACTIVE,
}


class EndReason(StrEnum):
    """Why a call's pipeline ended (the runner's ``CallResult.end_reason``), stored on
    its thread (``workflow_threads.end_reason``; a call failed by another instance
    reads ``instance_lost``)."""

    COMPLETED = "completed"  # the transport ended it: the caller hung up, the script ended
    STOPPED = "stopped"  # POST /api/bot/{id}/stop
    MAX_DURATION = "max_duration"  # FLOW_MAX_CALL_SECONDS
    IDLE = "idle"  # FLOW_IDLE_TIMEOUT_SECONDS without speech
    BUDGET_EXHAUSTED = "budget_exhausted"  # the key's budget or the call's own limit
    ERROR = "error"  # a fatal pipeline error
    CANCELLED = "cancelled"  # the call's task was cancelled
    SHUTDOWN = "shutdown"  # the instance shut down (SIGTERM: a goodbye, or at once)

    @property
    def normal(self) -> bool:
        """The call ended as calls do: its post-call step runs."""
        return self in NORMAL_ENDS


NORMAL_ENDS = frozenset(
    {
        EndReason.COMPLETED,
        EndReason.STOPPED,
        EndReason.MAX_DURATION,
        EndReason.IDLE,
        EndReason.BUDGET_EXHAUSTED,
        EndReason.SHUTDOWN,
    }
)


class ErrorStage(StrEnum):
    """Where a failed call failed (``workflow_threads.error_stage``)."""

    JOIN = "join"
    CALL = "call"
    POST_CALL = "post_call"
    PROCESS_TRANSCRIPT = "process_transcript"
    EXTRACT_INSIGHTS = "extract_insights"


async def move(sb: AsyncClient, thread_id: UUID | str, to: CallStatus, **columns: Any) -> bool:
    """Move a thread to ``to`` if its status allows it (see :data:`ALLOWED_FROM`),
    setting ``columns`` with it; returns whether it moved."""
    if to is CallStatus.FAILED:
        raise ValueError("use fail(): a failure names its stage, code and message")
    return await _move(sb, thread_id, to, columns)


async def fail(
    sb: AsyncClient, thread_id: UUID | str, *, stage: str, code: str, message: str
) -> bool:
    """Mark an active thread ``failed`` with why; a finished thread is left as it is.
    Returns whether it moved."""
    columns = {
        "error_stage": str(stage),
        "error_code": code,
        "error_message": message[:ERROR_MESSAGE_MAX_CHARS],
    }
    return await _move(sb, thread_id, CallStatus.FAILED, columns)


async def _move(
    sb: AsyncClient, thread_id: UUID | str, to: CallStatus, columns: dict[str, Any]
) -> bool:
    allowed = [str(s) for s in ALLOWED_FROM[to]]
    res = await call(
        lambda: (
            sb.table("workflow_threads")
            .update({"status": str(to), **columns})
            .eq("workflow_thread_id", str(thread_id))
            .in_("status", allowed)
            .execute()
        )
    )
    return bool(rows_of(res))


async def fail_abandoned(sb: AsyncClient, *, created_before: datetime) -> list[str]:
    """Mark failed the unfinished threads created before ``created_before`` (their
    instance died); returns their ids."""
    res = await call(
        lambda: (
            sb.table("workflow_threads")
            .update(
                {
                    "status": str(CallStatus.FAILED),
                    "error_stage": str(ErrorStage.CALL),
                    "error_code": "instance_lost",
                    "error_message": "the instance running this call stopped before it ended",
                }
            )
            .in_("status", [str(s) for s in ACTIVE])
            .lt("created_at", created_before.isoformat())
            .execute()
        )
    )
    return [str(r["workflow_thread_id"]) for r in rows_of(res)]


async def fail_lost_calls(
    sb: AsyncClient, *, instance_id: str, running: list[str], stale_seconds: int
) -> list[str]:
    """Fail the unfinished calls nobody runs: those of instances without a heartbeat
    for ``stale_seconds``, and those of ``instance_id`` not in ``running``; returns
    their ids."""
    res: Any = await call(
        sb.rpc(
            "fail_lost_calls",
            {"p_instance": instance_id, "p_running": running, "p_stale_seconds": stale_seconds},
        ).execute
    )
    return [str(r) for r in (res.data or [])]


class StopOutcome(StrEnum):
    REQUESTED = "requested"  # a live instance runs the call and will end it
    ENDED = "ended"  # no live instance runs it: it was failed at once
    NOT_RUNNING = "not_running"  # it is neither starting nor running


async def request_stop(
    sb: AsyncClient, thread_id: UUID | str, *, stale_seconds: int
) -> StopOutcome:
    """Ask the instance running a call to end it (it polls for requests); a call whose
    instance is gone is ended here and now."""
    res: Any = await call(
        sb.rpc(
            "request_call_stop", {"p_thread": str(thread_id), "p_stale_seconds": stale_seconds}
        ).execute
    )
    return StopOutcome(str(res.data))
