"""The usage dashboard: a static page at ``/dashboard`` and its data at ``/api/dashboard``.

The page itself carries no data and needs no key; it asks for an API key, keeps it in the
browser tab's session storage and calls ``GET /api/dashboard`` with it, so the dashboard
is authenticated exactly like the API and a key sees only its own usage. The figures are
computed in SQL (``dashboard_summary``) over the ledger.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from flow.api.deps import ApiKeyDep, SupabaseDep
from flow.db.client import call

STATIC = Path(__file__).resolve().parents[2] / "dashboard" / "static"

page = APIRouter(include_in_schema=False)
router = APIRouter(prefix="/api/dashboard", tags=["dashboard"])


@page.get("/dashboard")
async def dashboard_page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("")
async def dashboard_data(
    api_key: ApiKeyDep,
    sb: SupabaseDep,
    days: Annotated[int, Query(ge=1, le=366, description="Period: the last N days")] = 30,
    top: Annotated[int, Query(ge=1, le=100, description="How many costly calls")] = 10,
) -> dict[str, Any]:
    """Cost per day by model, volume per day, cost by category, averages, LLM latency
    percentiles, error rate and the most expensive calls of the calling key."""
    end = datetime.now(UTC)
    start = (end - timedelta(days=days)).replace(hour=0, minute=0, second=0, microsecond=0)
    res: Any = await call(
        sb.rpc(
            "dashboard_summary",
            {
                "p_api_key_id": str(api_key.id),
                "p_start": start.isoformat(),
                "p_end": end.isoformat(),
                "p_top": top,
            },
        ).execute
    )
    data: dict[str, Any] = res.data
    return data
