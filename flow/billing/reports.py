"""Who to bill, and for what: every key's usage over a period, costliest first.

One report per period, every key in it (keys without usage show zeros, so a key that
stopped using Flow is seen too): calls, minutes, tokens, TTS characters, STT seconds,
cost, and the cost split by kind (``llm``, ``tts``, ``stt``, and any kind added
later), with each key's name, prefix, state and Stripe customer. One SQL function builds
it whatever the number of keys (``usage_keys_report``, over ``usage_key_figures`` and
``usage_cost_by_kind``), so the API passes it on without reworking a thousand rows.

Money is text with the ledger's digits; minutes are the summed durations of the calls
counted (bot start to end), in minutes with three decimals.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from supabase import AsyncClient

from flow.db import reports


async def keys_usage(sb: AsyncClient, start: datetime, end: datetime) -> dict[str, Any]:
    """``{"totals": {...}, "keys": [{key fields, figures...}]}`` over [start, end), keys
    costliest first (then by name), as ``usage_keys_report`` builds it in SQL."""
    return await reports.keys_report(sb, start, end)
