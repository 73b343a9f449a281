"""Repricing in the database: the unpriced ledger rows, ``reprice_usage_events`` (prices
them, with ``usage_stats``, both rollups and one ``usage_corrections`` row each, in one
transaction), and the corrections' export cursor (see the migration ``reprice``).

Failure behaviour: errors from the database surface as :class:`DatabaseError` or
:class:`DatabaseUnavailable` (see :mod:`flow.db.client`); nothing is retried here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from supabase import AsyncClient

from flow.db.client import call, rows_of
from flow.db.exports import ExportPage, leased_page

UNPRICED_COLUMNS = (
    "id,api_key_id,occurred_at,kind,category,provider,model,input_tokens,output_tokens,"
    "cache_read_tokens,cache_write_tokens,input_audio_tokens,output_audio_tokens,"
    "cache_read_audio_tokens,characters,audio_seconds::text"
)


async def unpriced_events(
    sb: AsyncClient,
    *,
    key_ids: Sequence[str] | None,
    since: datetime | None,
    after: tuple[str, str] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Up to ``limit`` unpriced ledger rows, oldest first, after the keyset ``after`` =
    (occurred_at, id) of the previous page; only ``key_ids``' and from ``since``."""
    query = sb.table("usage_events").select(UNPRICED_COLUMNS).is_("cost_usd", "null")
    if key_ids is not None:
        query = query.in_("api_key_id", [str(k) for k in key_ids])
    if since is not None:
        query = query.gte("occurred_at", since.isoformat())
    if after is not None:
        at, ledger_id = after
        query = query.or_(f'occurred_at.gt."{at}",and(occurred_at.eq."{at}",id.gt.{ledger_id})')
    res = await call(lambda: query.order("occurred_at").order("id").limit(limit).execute())
    return rows_of(res)


async def reprice(sb: AsyncClient, prices: list[dict[str, Any]]) -> dict[str, Any]:
    """Price these events (``id``, ``input_cost_usd``, ``output_cost_usd``,
    ``price_source``, ``correction_id``) if still unpriced; returns ``priced``,
    ``cost_usd`` (text) and ``corrections``."""
    res: Any = await call(sb.rpc("reprice_usage_events", {"prices": prices}).execute)
    data: dict[str, Any] = res.data
    return data


async def corrected(sb: AsyncClient, ledger_ids: Iterable[str]) -> set[str]:
    """Which of these ledger rows have a correction (they are exported as recorded)."""
    wanted = sorted({str(i) for i in ledger_ids})
    if not wanted:
        return set()
    res: Any = await call(sb.rpc("usage_corrected", {"p_ids": wanted}).execute)
    return {str(r) for r in (res.data or [])}


async def correction_page(
    sb: AsyncClient, integration_id: str, owner: str, limit: int
) -> ExportPage:
    """Up to ``limit`` corrections after the integration's correction cursor, shaped as
    ledger rows (``corrects`` names the original), for the lease holder."""
    return await leased_page(sb, "analytics_correction_page", integration_id, owner, limit)
