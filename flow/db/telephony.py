"""``telephony_calls``: one row per phone call leg, beside its ``workflow_threads`` row.

Each row holds the call's one-time Media Stream token as its sha256 only, and when the
token was spent. It is spent once, atomically, by whichever comes first:

- :func:`claim_stream`: the Media Stream that presents it (the SQL function
  ``claim_telephony_stream`` checks, in one transaction, that it is unspent, not expired
  and the token of the call whose stream presents it);
- :func:`end_unstreamed`: Twilio's report that the call ended before any stream did.

So a call either streams or is ended by its status, never both.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from postgrest.types import ReturnMethod
from supabase import AsyncClient

from flow.db.client import call, first_of, update_call_row

CALL_COLUMNS = (
    "workflow_thread_id,provider,direction,call_sid,flow_number,remote_party,"
    "token_spent_at,stream_sid,stream_started_at,stream_ended_at,twilio_status,created_at"
)


class Direction(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


def new_stream_token() -> tuple[str, str]:
    """A stream token and its sha256 (what is stored)."""
    token = secrets.token_urlsafe(32)
    return token, hash_token(token)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_call(
    sb: AsyncClient,
    *,
    workflow_thread_id: UUID | str,
    direction: Direction,
    flow_number: str,
    remote_party: str | None,
    token_hash: str,
    token_seconds: int,
    call_sid: str | None = None,
) -> None:
    row = {
        "workflow_thread_id": str(workflow_thread_id),
        "direction": str(direction),
        "flow_number": flow_number,
        "remote_party": remote_party,
        "stream_token_hash": token_hash,
        "stream_token_seconds": token_seconds,
        "call_sid": call_sid,
    }
    await call(
        lambda: sb.table("telephony_calls").insert(row, returning=ReturnMethod.minimal).execute()
    )


async def set_call_sid(sb: AsyncClient, workflow_thread_id: UUID | str, call_sid: str) -> None:
    await _update(sb, workflow_thread_id, call_sid=call_sid)


async def get_call(sb: AsyncClient, workflow_thread_id: UUID | str) -> dict[str, Any] | None:
    res = await call(
        lambda: (
            sb.table("telephony_calls")
            .select(CALL_COLUMNS)
            .eq("workflow_thread_id", str(workflow_thread_id))
            .limit(1)
            .execute()
        )
    )
    return first_of(res)


async def call_sid_of(sb: AsyncClient, thread: dict[str, Any]) -> str | None:
    """A thread's Twilio call SID: a phone call's leg's, else None."""
    if thread.get("transport") != "twilio":
        return None
    leg = await get_call(sb, thread["workflow_thread_id"])
    return leg.get("call_sid") if leg else None


async def find_by_call_sid(sb: AsyncClient, call_sid: str) -> dict[str, Any] | None:
    res = await call(
        lambda: (
            sb.table("telephony_calls")
            .select(CALL_COLUMNS)
            .eq("call_sid", call_sid)
            .limit(1)
            .execute()
        )
    )
    return first_of(res)


async def claim_stream(
    sb: AsyncClient, token: str, call_sid: str, stream_sid: str
) -> tuple[str | None, str | None]:
    """Spend a stream token for the call ``call_sid``: (the thread id, None), or (None,
    why it is refused: ``unknown``, ``spent``, ``expired`` or ``other_call``)."""
    res: Any = await call(
        sb.rpc(
            "claim_telephony_stream",
            {"p_token_hash": hash_token(token), "p_call_sid": call_sid, "p_stream_sid": stream_sid},
        ).execute
    )
    answer: dict[str, Any] = res.data or {}
    thread = answer.get("workflow_thread_id")
    return (str(thread), None) if thread else (None, str(answer.get("refused", "unknown")))


async def end_unstreamed(sb: AsyncClient, call_sid: str, twilio_status: str) -> str | None:
    """Spend the token of a call that ended before its stream started; returns its
    thread id, or None when its stream had started (or no such call)."""
    res = await call(
        lambda: (
            sb.table("telephony_calls")
            .update({"token_spent_at": "now", "twilio_status": twilio_status})
            .eq("call_sid", call_sid)
            .is_("token_spent_at", "null")
            .execute()
        )
    )
    row = first_of(res)
    return str(row["workflow_thread_id"]) if row else None


async def note_status(sb: AsyncClient, call_sid: str, twilio_status: str) -> None:
    """Keep Twilio's latest status of the call."""
    await call(
        lambda: (
            sb.table("telephony_calls")
            .update({"twilio_status": twilio_status}, returning=ReturnMethod.minimal)
            .eq("call_sid", call_sid)
            .execute()
        )
    )


async def save_stream_times(
    sb: AsyncClient, workflow_thread_id: UUID | str, started_at: datetime, ended_at: datetime
) -> None:
    await _update(
        sb,
        workflow_thread_id,
        stream_started_at=started_at.isoformat(),
        stream_ended_at=ended_at.isoformat(),
    )


async def _update(sb: AsyncClient, workflow_thread_id: UUID | str, **columns: Any) -> None:
    await update_call_row(sb, "telephony_calls", workflow_thread_id, columns)
