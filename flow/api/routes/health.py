"""Health, for people and load balancers (no auth).

- ``GET /health``: is the service up and can it reach its database.
- ``GET /health/live``: the process answers (a liveness probe: restart it if not). It
  stays 200 while the instance drains.
- ``GET /health/ready``: the instance can take a call now (a readiness probe: send joins
  here only if 200). 503 with the reason otherwise: ``draining`` (it is shutting down),
  ``full`` (``FLOW_MAX_BOTS`` calls held), ``bot_not_configured``, or
  ``database_unavailable``.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from flow.api.deps import RunnerDep, SettingsDep, SupabaseDep
from flow.bot.contract import configuration_problem
from flow.db.client import DatabaseError, DatabaseUnavailable, ping

router = APIRouter(tags=["health"])

# A load balancer's probe wants an answer, not the database client's retries.
CHECK_TIMEOUT_SECONDS = 2.0
RETRY_AFTER_SECONDS = 5


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: Literal["ok", "unavailable"]
    error: str | None = None
    message: str | None = None


class Liveness(BaseModel):
    status: Literal["alive"] = "alive"


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    error: Literal["draining", "full", "bot_not_configured", "database_unavailable"] | None = None
    message: str | None = None


async def _database_answers(sb: SupabaseDep) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            await ping(sb)
    except (DatabaseUnavailable, DatabaseError, TimeoutError):
        return False
    return True


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "The database is unreachable"}},
)
async def health(sb: SupabaseDep) -> Health | JSONResponse:
    if not await _database_answers(sb):
        body = Health(
            status="degraded",
            database="unavailable",
            error="database_unavailable",
            message="the database cannot be reached",
        )
        return JSONResponse(
            body.model_dump(), status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
        )
    return Health(status="ok", database="ok")


@router.get("/health/live", response_model=Liveness)
async def live() -> Liveness:
    return Liveness()


@router.get(
    "/health/ready",
    response_model=Readiness,
    response_model_exclude_none=True,
    responses={503: {"model": Readiness, "description": "Send no call here now; why"}},
)
async def ready(
    request: Request, settings: SettingsDep, sb: SupabaseDep, runner: RunnerDep
) -> Readiness | JSONResponse:
    drain = getattr(request.app.state, "drain", None)
    if drain is not None and drain.draining:
        return _not_ready("draining", "the instance is shutting down: it takes no new call")
    if not runner.has_capacity():
        return _not_ready(
            "full", f"the instance holds as many calls as it may ({settings.flow_max_bots})"
        )
    if (problem := configuration_problem(settings)) is not None:
        return _not_ready("bot_not_configured", f"this instance cannot run bots: {problem}")
    if not await _database_answers(sb):
        return _not_ready("database_unavailable", "the database cannot be reached")
    return Readiness(status="ready")


def _not_ready(error: str, message: str) -> JSONResponse:
    body = {"status": "not_ready", "error": error, "message": message}
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
