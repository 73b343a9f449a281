"""Who to bill, and for what: every key's usage over a period, costliest first.

One report per period, every key in it (keys without usage show zeros, so a key that
stopped using Flow is seen too): calls, minutes, tokens, TTS characters, STT seconds,
cost, and the cost split by kind (``llm``, ``tts``, ``stt``, and any kind added
later), with each key's name, prefix, state and Stripe customer. One SQL function builds
it whatever the number of keys (``usage_keys_report``; ``usage_key_figures`` and
``usage_cost_by_kind`` give the same figures a page of keys at a time), so the API
passes it on without reworking a thousand rows.

The closed UTC days of a range are summed once: the first report over a span of days
keeps every key's figures for it, and later reports over the same days add only what
lies outside them (the partial days at either end) to what was kept. Any write to the
ledger on one of those days forgets what was kept, in the writer's own transaction
(see the migration ``keys_report_closed_days``), so the report stays exact.

Money is text with the ledger's digits; minutes are the summed durations of the calls
counted (bot start to end), in minutes with three decimals.
"""

from __future__ import annotations

from datetime import datetime

from supabase import AsyncClient

from flow.db import reports


async def keys_usage_body(sb: AsyncClient, start: datetime, end: datetime) -> bytes:
    """``{"totals": {...}, "keys": [{key fields, figures...}]}`` over [start, end), keys
    costliest first (then by name), as ``usage_keys_report`` builds it in SQL: its JSON
    text, passed on without being parsed and written again."""
    return await reports.keys_report_body(sb, start, end)
