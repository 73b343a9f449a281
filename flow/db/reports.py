"""Reports over many keys and over one key's calls: what the operator's console, the
billing CSV and the dashboard's call list read.

``usage_key_figures`` and ``usage_cost_by_kind`` (SQL, see the migration
``key_reports``) sum whole UTC hours from the rollups and the partial hours from the
ledger; :func:`list_calls` pages through ``workflow_threads`` newest first with a
keyset cursor, so a page costs the same at the millionth call as at the first.

Failure behaviour: errors from the database surface as :class:`DatabaseError` or
:class:`DatabaseUnavailable` (see :mod:`flow.db.client`); nothing is retried here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from supabase import AsyncClient

from flow.db.client import call, loads_exact, rows_of, rpc_body

CALL_COLUMNS = (
    "workflow_thread_id,api_key_id,status,transport,end_user_id,error_code,end_reason,"
    "created_at,bot_started_at,bot_ended_at,usage_stats_json:usage_stats::text"
)


async def key_figures(
    sb: AsyncClient,
    key_ids: Sequence[str] | None,
    start: datetime,
    end: datetime,
    period: str | None = None,
) -> list[dict[str, Any]]:
    """Per key (and UTC ``day`` or ``month`` when ``period`` is given) over [start, end):
    ``calls``, ``end_users``, ``events``, ``llm_calls``, tokens, ``tts_characters``,
    ``stt_seconds``, ``telephony_seconds``, ``cost_usd``, ``unpriced_events``,
    ``error_events`` and ``call_seconds``; ordered by key then period. ``key_ids``
    None: every key."""
    params = {
        "p_key_ids": None if key_ids is None else [str(k) for k in key_ids],
        "p_start": start.isoformat(),
        "p_end": end.isoformat(),
        "p_period": period,
    }
    return rows_of(await call(sb.rpc("usage_key_figures", params).execute))


async def cost_by_kind(
    sb: AsyncClient, key_ids: Sequence[str] | None, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    """Per key and kind over [start, end): ``events`` and ``cost_usd`` (text)."""
    params = {
        "p_key_ids": None if key_ids is None else [str(k) for k in key_ids],
        "p_start": start.isoformat(),
        "p_end": end.isoformat(),
    }
    return rows_of(await call(sb.rpc("usage_cost_by_kind", params).execute))


async def keys_report_body(
    sb: AsyncClient, start: datetime, end: datetime, *, use_cache: bool = True
) -> bytes:
    """``usage_keys_report``: every key over [start, end), costliest first, with the
    totals (see :mod:`flow.billing.reports`), as the JSON text the database built
    (``{"totals": ..., "keys": [...]}``), unparsed: what the API passes on. The closed
    UTC days of the range are read from what an earlier report kept of them, unless
    ``use_cache`` is false."""
    params = {"p_start": start.isoformat(), "p_end": end.isoformat(), "p_use_cache": use_cache}
    return await rpc_body(sb, "usage_keys_report", params)


async def key_page(
    sb: AsyncClient, *, after: str | None, limit: int, only: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Up to ``limit`` keys (``id``, ``name``) ordered by id, after the id ``after``;
    only those in ``only`` when given."""
    query = sb.table("api_keys").select("id,name")
    if after is not None:
        query = query.gt("id", after)
    if only is not None:
        query = query.in_("id", [str(k) for k in only])
    return rows_of(await call(lambda: query.order("id").limit(limit).execute()))


@dataclass(frozen=True)
class CallFilter:
    """Which calls a listing shows.

    Parameters:
        api_key_id: the key whose calls (None: every key's, for operators).
        status: only calls in this status.
        end_user_id: only this end user's calls.
        start / end: only calls created in [start, end).
    """

    api_key_id: str | None = None
    status: str | None = None
    end_user_id: str | None = None
    start: datetime | None = None
    end: datetime | None = None


async def list_calls(
    sb: AsyncClient, where: CallFilter, *, limit: int, after: tuple[str, str] | None = None
) -> list[dict[str, Any]]:
    """Up to ``limit`` calls, newest first, after the keyset ``after`` = (created_at,
    workflow_thread_id) of the last call of the previous page. ``usage_stats`` exact."""
    query = sb.table("workflow_threads").select(CALL_COLUMNS)
    if where.api_key_id is not None:
        query = query.eq("api_key_id", where.api_key_id)
    if where.status is not None:
        query = query.eq("status", where.status)
    if where.end_user_id is not None:
        query = query.eq("end_user_id", where.end_user_id)
    if where.start is not None:
        query = query.gte("created_at", where.start.isoformat())
    if where.end is not None:
        query = query.lt("created_at", where.end.isoformat())
    if after is not None:
        at, thread_id = after
        query = query.or_(
            f'created_at.lt."{at}",and(created_at.eq."{at}",workflow_thread_id.lt.{thread_id})'
        )
    res = await call(
        lambda: (
            query.order("created_at", desc=True)
            .order("workflow_thread_id", desc=True)
            .limit(limit)
            .execute()
        )
    )
    rows = rows_of(res)
    for row in rows:
        row["usage_stats"] = loads_exact(row.pop("usage_stats_json", None)) or {}
    return rows
