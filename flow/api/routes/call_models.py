"""The shapes of a call's ledger rows and of call listings, shared by the customer's
routes (``/api/bot``) and the operator's (``/api/admin``).

A listing pages newest first with an opaque ``cursor`` (the last call's creation time
and id): pass ``next_cursor`` back to get the next page; it is null on the last one.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from flow.api.errors import ApiError
from flow.api.schemas import DecimalText


class LedgerEvent(BaseModel):
    """One ledger row of a call: what was metered, how much, and what it cost.

    Parameters:
        kind: ``llm``, ``tts``, ``stt``, ``telephony`` (and any kind added later).
        category: ``bot`` (during the call) or ``insights`` (after it).
        input_tokens: prompt tokens, cached and audio included; the other token counts
            are its parts or the output's (see the README's modalities).
        characters: TTS characters. audio_seconds: STT audio, or a phone call leg's
            duration (decimal string).
        cost_usd: decimal string, null when the event is unpriced; ``input_cost_usd``
            and ``output_cost_usd`` its split, where recorded.
        price_source: where the price came from (null: unpriced, or recorded before
            sources were).
        estimated: counts Flow estimated (a reply cut off before the vendor reported).
    """

    id: UUID
    occurred_at: datetime
    kind: str
    category: str
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    input_audio_tokens: int
    output_audio_tokens: int
    cache_read_audio_tokens: int
    characters: int
    audio_seconds: DecimalText
    cost_usd: DecimalText | None
    input_cost_usd: DecimalText | None
    output_cost_usd: DecimalText | None
    price_source: str | None
    latency_ms: DecimalText | None
    status_code: int | None
    is_error: bool
    estimated: bool


class CallEvents(BaseModel):
    """A call's ledger rows, oldest first."""

    events: list[LedgerEvent]


class CallSummary(BaseModel):
    """One call in a listing.

    Parameters:
        cost_usd: the call's cost so far (its ``usage_stats``), a decimal string.
        tokens: input + output tokens. duration_seconds: bot start to end (null before
            the bot started; up to now while it runs). telephony_seconds: the phone call
            leg's duration. end_reason: how the call ended (null while it runs).
    """

    workflow_thread_id: UUID
    api_key_id: UUID
    status: str
    transport: str
    end_user_id: str | None
    error_code: str | None
    created_at: datetime
    bot_started_at: datetime | None
    bot_ended_at: datetime | None
    duration_seconds: float | None
    cost_usd: DecimalText
    tokens: int
    tts_characters: int
    stt_seconds: DecimalText
    telephony_seconds: DecimalText
    unpriced_events: int
    end_reason: str | None


class CallPage(BaseModel):
    calls: list[CallSummary]
    next_cursor: str | None


def call_summary(row: dict[str, Any]) -> CallSummary:
    stats = row.get("usage_stats") or {}
    started, ended = row.get("bot_started_at"), row.get("bot_ended_at")
    duration = None
    if started:
        end_at = datetime.fromisoformat(ended) if ended else datetime.now().astimezone()
        duration = round((end_at - datetime.fromisoformat(started)).total_seconds(), 3)
    return CallSummary(
        workflow_thread_id=row["workflow_thread_id"],
        api_key_id=row["api_key_id"],
        status=row["status"],
        transport=row["transport"],
        end_user_id=row.get("end_user_id"),
        error_code=row.get("error_code"),
        created_at=row["created_at"],
        bot_started_at=started,
        bot_ended_at=ended,
        duration_seconds=duration,
        cost_usd=stats.get("total_cost_usd", 0),
        tokens=int(stats.get("total_tokens", 0)),
        tts_characters=int(stats.get("tts_characters", 0)),
        stt_seconds=stats.get("stt_seconds", 0),
        telephony_seconds=stats.get("telephony_seconds", 0),
        unpriced_events=int(stats.get("unpriced_events", 0)),
        end_reason=row.get("end_reason"),
    )


def call_page(rows: list[dict[str, Any]], limit: int) -> CallPage:
    """The page, with the cursor of its last call when there may be more."""
    last = rows[-1] if len(rows) == limit else None
    cursor = None
    if last is not None:
        text = f"{last['created_at']}|{last['workflow_thread_id']}"
        cursor = base64.urlsafe_b64encode(text.encode()).decode()
    return CallPage(calls=[call_summary(r) for r in rows], next_cursor=cursor)


def parse_cursor(cursor: str | None) -> tuple[str, str] | None:
    """(created_at, workflow_thread_id) from a ``next_cursor``; 422 when it is not one."""
    if cursor is None:
        return None
    try:
        at, _, thread_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.fromisoformat(at).isoformat(), str(UUID(thread_id))
    except (ValueError, UnicodeDecodeError):
        raise ApiError(
            422,
            "validation_error",
            "cursor is not a next_cursor this API gave",
            details=[{"loc": ["query", "cursor"], "msg": "invalid cursor", "type": "value_error"}],
        ) from None
