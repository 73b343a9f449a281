"""A call's status moves only forward, in one conditional update each: a late writer
(a retried end-of-call write, a second instance, a stop racing the end) can never move
a finished call, and every move answers whether it happened."""

from __future__ import annotations

from typing import Any

from supabase import AsyncClient

from flow.db import call_state
from flow.db import threads as threads_repo
from flow.db.call_state import ACTIVE, ALLOWED_FROM, FINISHED, CallStatus, ErrorStage

FORWARD = [CallStatus.STARTING, CallStatus.RUNNING, CallStatus.PROCESSING, CallStatus.COMPLETED]


async def status_of(sb: AsyncClient, thread: dict[str, Any]) -> str:
    row = await threads_repo.get_thread(sb, thread["workflow_thread_id"])
    assert row is not None
    return str(row["status"])


async def fail(sb: AsyncClient, thread: dict[str, Any], code: str = "late") -> bool:
    tid = thread["workflow_thread_id"]
    return await call_state.fail(sb, tid, stage=ErrorStage.CALL, code=code, message="late")


def test_every_status_but_the_first_is_reached_from_somewhere() -> None:
    assert set(ALLOWED_FROM) == set(CallStatus) - {CallStatus.PENDING}
    assert ALLOWED_FROM[CallStatus.FAILED] == ACTIVE
    assert all(not set(sources) & set(FINISHED) for sources in ALLOWED_FROM.values())


async def test_a_completed_call_stays_completed(sb: AsyncClient, thread: dict[str, Any]) -> None:
    tid = thread["workflow_thread_id"]
    for status in FORWARD:
        assert await call_state.move(sb, tid, status)
    assert not await fail(sb, thread)
    for status in FORWARD:
        assert not await call_state.move(sb, tid, status)
    assert await status_of(sb, thread) == CallStatus.COMPLETED


async def test_a_failed_call_stays_failed_with_its_first_reason(
    sb: AsyncClient, thread: dict[str, Any]
) -> None:
    tid = thread["workflow_thread_id"]
    assert await call_state.move(sb, tid, CallStatus.STARTING)
    assert await fail(sb, thread, code="first")
    assert not await fail(sb, thread, code="second")
    for status in FORWARD:
        assert not await call_state.move(sb, tid, status)
    row = await threads_repo.get_thread(sb, tid)
    assert row is not None
    assert (row["status"], row["error_code"]) == (CallStatus.FAILED, "first")


async def test_a_move_out_of_order_is_refused(sb: AsyncClient, thread: dict[str, Any]) -> None:
    tid = thread["workflow_thread_id"]
    assert not await call_state.move(sb, tid, CallStatus.RUNNING)  # pending -> running
    assert not await call_state.move(sb, tid, CallStatus.COMPLETED)
    assert await status_of(sb, thread) == CallStatus.PENDING
    assert await call_state.move(sb, tid, CallStatus.STARTING)
    assert not await call_state.move(sb, tid, CallStatus.COMPLETED)  # starting -> completed
    assert await status_of(sb, thread) == CallStatus.STARTING
