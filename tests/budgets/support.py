"""Shared pieces for the budget tests: spending a known amount on a key's ledger, and
a key with a budget."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from supabase import AsyncClient

from flow.db import budgets
from flow.db import threads as threads_repo
from flow.db.call_state import CallStatus, move
from flow.db.usage import record_usage_events
from flow.metering.events import UsageEvent, UsageKind


async def spend(
    sb: AsyncClient,
    api_key_id: str,
    usd: str | Decimal | None,
    *,
    occurred_at: datetime | None = None,
    thread: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Record one TTS event costing ``usd`` (None: unpriced) on ``thread``, or on a new
    finished call of the key; returns the thread."""
    if thread is None:
        thread = await threads_repo.create_thread(
            sb, api_key_id=api_key_id, transport="simulated", script=["hi"]
        )
        for status in (CallStatus.STARTING, CallStatus.PROCESSING, CallStatus.COMPLETED):
            await move(sb, thread["workflow_thread_id"], status)
    extra = {"occurred_at": occurred_at} if occurred_at is not None else {}
    event = UsageEvent(
        workflow_thread_id=thread["workflow_thread_id"],
        api_key_id=api_key_id,
        kind=UsageKind.TTS,
        provider="openai",
        model="tts-1",
        characters=10,
        cost_usd=None if usd is None else Decimal(str(usd)),
        **extra,
    )
    await record_usage_events(sb, [event])
    return thread


async def with_budget(sb: AsyncClient, api_key: dict[str, Any], **fields: Any) -> str:
    """Give the key a budget; returns its id."""
    fields.setdefault("limit_usd", Decimal("1"))
    key_id = str(api_key["id"])
    await budgets.set_budget(sb, key_id, budgets.Budget(**fields))
    return key_id
