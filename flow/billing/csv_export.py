"""The billing CSV: one row per key (and per UTC day or month when grouped), for
spreadsheets and invoicing tools.

Columns: ``api_key_id, api_key_name, period_start, period_end, calls, llm_calls,
input_tokens, output_tokens, tts_characters, stt_seconds, telephony_seconds, cost_usd,
unpriced_events`` (``telephony_seconds``: phone call legs' durations).
Times are ISO 8601 UTC (``2026-11-01T00:00:00Z``); the period is ``[start, end)``, and a
day or month cut by either end is cut in the row too (``period_start`` is the later of
the two, ``period_end`` the earlier), so the rows add up to the period exactly. Money
and seconds keep the ledger's digits. No totals row. Keys without usage in the period
have no row.

Constant memory whatever the ledger holds: the keys are read a page at a time (by id),
and each page's rows are summed in SQL (``usage_key_figures``), at most
:data:`ROWS_PER_PAGE` of them; each row is written and forgotten.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from supabase import AsyncClient

from flow.db import reports

COLUMNS = (
    "api_key_id",
    "api_key_name",
    "period_start",
    "period_end",
    "calls",
    "llm_calls",
    "input_tokens",
    "output_tokens",
    "tts_characters",
    "stt_seconds",
    "telephony_seconds",
    "cost_usd",
    "unpriced_events",
)
ROWS_PER_PAGE = 5_000
PERIODS = ("day", "month")


def _line(values: Sequence[Any]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(values)
    return out.getvalue()


def iso_utc(value: str | datetime) -> str:
    """``2026-11-01T00:00:00Z`` (microseconds kept when there are any)."""
    at = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return at.isoformat().replace("+00:00", "Z")


def periods_in(start: datetime, end: datetime, period: str | None) -> int:
    """An upper bound of the periods a key can have rows for in [start, end)."""
    if period == "day":
        return (end - start).days + 2
    if period == "month":
        return (end.year - start.year) * 12 + end.month - start.month + 2
    return 1


async def csv_lines(
    sb: AsyncClient,
    start: datetime,
    end: datetime,
    period: str | None = None,
    *,
    key_ids: Sequence[str] | None = None,
) -> AsyncIterator[str]:
    """The CSV, line by line (header first): every key's rows, or ``key_ids``' only."""
    if period is not None and period not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}")
    yield _line(COLUMNS)
    keys_per_page = max(1, ROWS_PER_PAGE // periods_in(start, end, period))
    after: str | None = None
    while True:
        keys = await reports.key_page(sb, after=after, limit=keys_per_page, only=key_ids)
        if not keys:
            return
        names = {str(k["id"]): k["name"] for k in keys}
        for row in await reports.key_figures(sb, list(names), start, end, period):
            key_id = str(row["api_key_id"])
            yield _line(
                (
                    key_id,
                    names[key_id],
                    iso_utc(row["period_start"]),
                    iso_utc(row["period_end"]),
                    row["calls"],
                    row["llm_calls"],
                    row["input_tokens"],
                    row["output_tokens"],
                    row["tts_characters"],
                    row["stt_seconds"],
                    row["telephony_seconds"],
                    row["cost_usd"],
                    row["unpriced_events"],
                )
            )
        if len(keys) < keys_per_page:
            return
        after = str(keys[-1]["id"])
