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

The operator's console opens on the last 30 days: :class:`ConsoleSpan` (an instance job)
keeps that period's closed days once a UTC day, right after midnight, so that the day's
first report does not pay for them.

Money is text with the ledger's digits; minutes are the summed durations of the calls
counted (bot start to end), in minutes with three decimals.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta

from supabase import AsyncClient

from flow.db import reports
from flow.db.client import DatabaseError, DatabaseUnavailable

log = logging.getLogger(__name__)

CONSOLE_DAYS = 30  # the period the console opens on (flow/admin/static/admin.js)


async def keys_usage_body(sb: AsyncClient, start: datetime, end: datetime) -> bytes:
    """``{"totals": {...}, "keys": [{key fields, figures...}]}`` over [start, end), keys
    costliest first (then by name), as ``usage_keys_report`` builds it in SQL: its JSON
    text, passed on without being parsed and written again."""
    return await reports.keys_report_body(sb, start, end)


class ConsoleSpan:
    """Keeps the closed days of the console's default period (the last
    :data:`CONSOLE_DAYS` days) ready: the first round of each UTC day reads that
    period's report once, which keeps its days; later rounds that day do nothing."""

    def __init__(self, sb: AsyncClient) -> None:
        self.sb = sb
        self.kept_on: date | None = None

    async def keep(self) -> bool:
        """Read the report once today; True when this round read it. Never raises."""
        now = datetime.now(UTC)
        if self.kept_on == now.date():
            return False
        try:
            await reports.keys_report_body(self.sb, now - timedelta(days=CONSOLE_DAYS), now)
        except (DatabaseUnavailable, DatabaseError) as exc:
            log.warning("could not keep the console's period (next round retries): %s", exc)
            return False
        self.kept_on = now.date()
        return True
