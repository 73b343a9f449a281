"""The billing CSV over HTTP: ``GET /api/usage/export.csv``.

A customer key gets its own rows; an operator token every key's. The body is streamed
as it is read (a page of keys at a time, see :mod:`flow.billing.csv_export`), so the
export of a large ledger holds no more memory than a small one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from flow.api.deps import CallerDep, SupabaseDep
from flow.api.errors import ERROR_RESPONSES
from flow.api.ranges import report_range
from flow.auth import ApiKey
from flow.billing.csv_export import COLUMNS, csv_lines

router = APIRouter(prefix="/api/usage", tags=["usage"], responses=ERROR_RESPONSES)

_CSV: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/csv": {"example": ",".join(COLUMNS) + "\n"}},
        "description": "One row per key (and per UTC day or month when grouped)",
    }
}


@router.get("/export.csv", response_class=StreamingResponse, responses=_CSV)
async def export_csv(
    caller: CallerDep,
    sb: SupabaseDep,
    start: datetime | None = None,
    end: datetime | None = None,
    group_by: Literal["day", "month"] | None = None,
) -> StreamingResponse:
    """Usage and cost per key over [start, end) (default: the last 30 days) as CSV:
    ``api_key_id, api_key_name, period_start, period_end, calls, llm_calls,
    input_tokens, output_tokens, tts_characters, stt_seconds, cost_usd,
    unpriced_events``; times ISO 8601 UTC, no totals row. An API key gets its own rows,
    an operator token every key's."""
    start_at, end_at = report_range(start, end)
    key_ids = [caller.id] if isinstance(caller, ApiKey) else None
    name = f"flow-usage-{start_at:%Y%m%dT%H%M%SZ}-{end_at:%Y%m%dT%H%M%SZ}.csv"
    return StreamingResponse(
        csv_lines(sb, start_at, end_at, group_by, key_ids=key_ids),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
