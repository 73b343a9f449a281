"""Who to bill, and for what: every key's usage over a period, costliest first.

One report per period, every key in it (keys without usage show zeros, so a key that
stopped using Flow is seen too): calls, minutes, tokens, TTS characters, STT seconds,
cost, and the cost split by kind (``llm``, ``tts``, ``stt``, and any kind added
later). Two SQL calls answer it whatever the number of keys (``usage_key_figures``,
``usage_cost_by_kind``) plus the key list.

Money stays :class:`~decimal.Decimal` (text on the way out); minutes are the summed
durations of the calls counted (bot start to end), in minutes with three decimals.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from supabase import AsyncClient

from flow.db import billing as billing_db
from flow.db import keys as keys_repo
from flow.db import reports

COUNTS = (
    "calls",
    "end_users",
    "events",
    "llm_calls",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "tts_characters",
    "unpriced_events",
    "error_events",
)
DECIMALS = ("stt_seconds", "cost_usd", "call_seconds")


def _zero() -> dict[str, Any]:
    figures: dict[str, Any] = dict.fromkeys(COUNTS, 0)
    figures.update(dict.fromkeys(DECIMALS, Decimal(0)))
    figures["cost_by_kind"] = {}
    return figures


def _add(into: dict[str, Any], row: dict[str, Any]) -> None:
    for name in COUNTS:
        into[name] += int(row[name])
    for name in DECIMALS:
        into[name] += Decimal(str(row[name]))


def _text(figures: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in figures.items() if k not in DECIMALS and k != "cost_by_kind"}
    for name in DECIMALS:
        out[name] = str(figures[name])
    out["minutes"] = str((figures["call_seconds"] / 60).quantize(Decimal("0.001")))
    out["cost_by_kind"] = {k: str(v) for k, v in sorted(figures["cost_by_kind"].items())}
    return out


async def keys_usage(
    sb: AsyncClient, start: datetime, end: datetime, key_ids: Sequence[str] | None = None
) -> dict[str, Any]:
    """``{"totals": {...}, "keys": [{key fields, figures...}]}`` over [start, end),
    keys costliest first (then by name); ``key_ids`` limits it to those keys."""
    all_keys = await keys_repo.list_keys(sb)
    if key_ids is not None:
        wanted = {str(k) for k in key_ids}
        all_keys = [k for k in all_keys if str(k["id"]) in wanted]
    customers = await billing_db.stripe_customers(sb, [str(k["id"]) for k in all_keys])
    figures = {str(k["id"]): _zero() for k in all_keys}
    ids = list(figures) if key_ids is not None else None
    for row in await reports.key_figures(sb, ids, start, end):
        if str(row["api_key_id"]) in figures:
            _add(figures[str(row["api_key_id"])], row)
    totals = _zero()
    for row in await reports.cost_by_kind(sb, ids, start, end):
        key = figures.get(str(row["api_key_id"]))
        if key is None:
            continue
        cost = Decimal(str(row["cost_usd"]))
        key["cost_by_kind"][row["kind"]] = cost
        totals["cost_by_kind"][row["kind"]] = totals["cost_by_kind"].get(row["kind"], 0) + cost
    listed = []
    for key in all_keys:
        own = figures[str(key["id"])]
        _add(totals, own)
        listed.append(
            {
                "api_key_id": str(key["id"]),
                "name": key["name"],
                "owner": key.get("owner"),
                "key": key.get("key_prefix") or key.get("unkey_key_id"),
                "is_active": key["is_active"],
                "stripe_customer_id": customers.get(str(key["id"])),
                **_text(own),
            }
        )
    listed.sort(key=lambda k: (-Decimal(k["cost_usd"]), k["name"], k["api_key_id"]))
    return {"totals": _text(totals), "keys": listed}
