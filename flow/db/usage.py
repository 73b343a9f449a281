"""``usage_events``: the ledger, written only through ``record_usage_events``, and the
reports computed over it in SQL."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from supabase import AsyncClient

from flow import metrics
from flow.db.client import call, rows_of

MAX_BATCH = 10_000


class LedgerRow(Protocol):
    """A usage event as the ledger takes it (``flow.metering.events.UsageEvent``)."""

    def to_row(self) -> dict[str, Any]: ...


async def record_usage_events(sb: AsyncClient, events: Sequence[LedgerRow]) -> int:
    """Record a batch exactly once: returns how many events were new. The whole batch
    is applied or refused (a bad event rejects the batch with the reason)."""
    if not events:
        return 0
    inserted = 0
    for start in range(0, len(events), MAX_BATCH):
        rows = [e.to_row() for e in events[start : start + MAX_BATCH]]
        began, outcome = time.perf_counter(), "error"
        try:
            res: Any = await call(sb.rpc("record_usage_events", {"events": rows}).execute)
            outcome = "ok"
        finally:
            metrics.LEDGER_WRITE.labels(outcome).observe(time.perf_counter() - began)
        inserted += int(res.data)
    return inserted


async def usage_report(
    sb: AsyncClient,
    api_key_id: str,
    start: datetime,
    end: datetime,
    group_by: str | None = None,
) -> dict[str, Any]:
    """The ``usage_report`` SQL function: ``{"totals": {...}, "groups": [...]}`` for one
    key over [start, end), decimals as strings."""
    return await _report(sb, "usage_report", api_key_id, start, end, p_group_by=group_by)


async def dashboard_summary(
    sb: AsyncClient, api_key_id: str, start: datetime, end: datetime, top: int
) -> dict[str, Any]:
    """The ``dashboard_summary`` SQL function: one key's figures over [start, end), read
    from the hourly rollups; decimals as strings."""
    return await _report(sb, "dashboard_summary", api_key_id, start, end, p_top=top)


async def _report(
    sb: AsyncClient,
    function: str,
    api_key_id: str,
    start: datetime,
    end: datetime,
    **params: Any,
) -> dict[str, Any]:
    args = {
        "p_api_key_id": str(api_key_id),
        "p_start": start.isoformat(),
        "p_end": end.isoformat(),
        **params,
    }
    res: Any = await call(sb.rpc(function, args).execute)
    data: dict[str, Any] = res.data
    return data


async def ledger_daily_usage(
    sb: AsyncClient, provider: str, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    """The ``usage_reconcile_daily`` SQL function: one vendor's usage over [start, end)
    per UTC day (``YYYY-MM-DD``), kind and model, every key's together: ``requests``
    (one event each), ``calls`` (distinct calls: a streaming vendor's sessions), token,
    ``characters`` and ``audio_seconds`` sums, ``cost_usd`` and ``unpriced_events``;
    decimals as strings."""
    args = {"p_provider": provider, "p_start": start.isoformat(), "p_end": end.isoformat()}
    res: Any = await call(sb.rpc("usage_reconcile_daily", args).execute)
    rows: list[dict[str, Any]] = res.data
    return rows


THREAD_EVENT_COLUMNS = (
    "id,occurred_at,kind,category,provider,model,input_tokens,output_tokens,"
    "cache_read_tokens,cache_write_tokens,reasoning_tokens,input_audio_tokens,"
    "output_audio_tokens,cache_read_audio_tokens,characters,audio_seconds::text,"
    "cost_usd::text,input_cost_usd::text,output_cost_usd::text,price_source,"
    "latency_ms::text,status_code,is_error,estimated"
)
MAX_THREAD_EVENTS = 10_000


async def thread_usage_events(sb: AsyncClient, thread_id: str) -> list[dict[str, Any]]:
    """One call's ledger rows (at most :data:`MAX_THREAD_EVENTS`), oldest first; every
    count, and ``audio_seconds``, ``latency_ms`` and the costs as decimal strings
    (``cost_usd`` None when the event is unpriced)."""
    res = await call(
        sb.table("usage_events")
        .select(THREAD_EVENT_COLUMNS)
        .eq("workflow_thread_id", str(thread_id))
        .order("occurred_at")
        .order("seq")
        .limit(MAX_THREAD_EVENTS)
        .execute
    )
    return rows_of(res)
