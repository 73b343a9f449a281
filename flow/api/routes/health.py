"""``GET /health``: is the service up and can it reach its database (no auth)."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from flow.api.deps import SupabaseDep
from flow.db.client import DatabaseError, DatabaseUnavailable, call

router = APIRouter(tags=["health"])

# A load balancer's probe wants an answer, not the database client's retries.
CHECK_TIMEOUT_SECONDS = 2.0


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: Literal["ok", "unavailable"]
    error: str | None = None
    message: str | None = None


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "The database is unreachable"}},
)
async def health(sb: SupabaseDep) -> Health | JSONResponse:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            await call(sb.table("api_keys").select("id").limit(1).execute)
    except (DatabaseUnavailable, DatabaseError, TimeoutError):
        body = Health(
            status="degraded",
            database="unavailable",
            error="database_unavailable",
            message="the database cannot be reached",
        )
        return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "5"})
    return Health(status="ok", database="ok")
