"""The usage dashboard: a static page at ``/dashboard`` and its data at ``/api/dashboard``.

The page itself carries no data and needs no key; it asks for an API key, keeps it in the
browser tab's session storage and calls ``GET /api/dashboard`` with it, so the dashboard
is authenticated exactly like the API and a key sees only its own usage. The figures are
computed in SQL (``dashboard_summary``) over the ledger.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from flow.api.deps import ApiKeyDep, SupabaseDep
from flow.api.errors import ERROR_RESPONSES
from flow.api.schemas import DashboardSummary
from flow.config import MAX_REPORT_DAYS
from flow.db import reports
from flow.db import usage as usage_repo

STATIC = Path(__file__).resolve().parents[2] / "dashboard" / "static"

page = APIRouter(include_in_schema=False)
router = APIRouter(prefix="/api/dashboard", tags=["dashboard"], responses=ERROR_RESPONSES)


@page.get("/dashboard")
async def dashboard_page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("", response_model=DashboardSummary)
async def dashboard_data(
    api_key: ApiKeyDep,
    sb: SupabaseDep,
    days: Annotated[
        int, Query(ge=1, le=MAX_REPORT_DAYS, description="Period: the last N days")
    ] = 30,
    top: Annotated[int, Query(ge=1, le=100, description="How many costly calls")] = 10,
) -> DashboardSummary:
    """Cost per day by model, volume per day, cost by category and by kind, averages,
    LLM latency percentiles, error rate and the most expensive calls of the calling key."""
    end = datetime.now(UTC)
    start = (end - timedelta(days=days)).replace(hour=0, minute=0, second=0, microsecond=0)
    data, kinds = await asyncio.gather(
        usage_repo.dashboard_summary(sb, api_key.id, start, end, top),
        reports.cost_by_kind(sb, [api_key.id], start, end),
    )
    data["cost_by_kind"] = {r["kind"]: r["cost_usd"] for r in kinds}
    return DashboardSummary.model_validate(data)
