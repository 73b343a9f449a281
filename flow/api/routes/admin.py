"""The operator's API, behind an operator token (``flow admin-token create``): every
key's usage and calls, for the ``/admin`` console and for scripts.

- ``GET /api/admin/usage``: every key over a period (any UTC start and end), costliest
  first, with calls, minutes, tokens, characters, seconds, cost, cost by kind and the
  key's budget as it stands (where it has one).
- ``GET /api/admin/keys/{id}/usage``: one key's report (``usage_report``) broken down
  by day, model, category, kind or end user, its cost by kind and its budget.
- ``GET /api/admin/calls``: calls of every key (or one, ``api_key_id``), filtered and
  paged; ``GET /api/admin/calls/{id}`` one call (transcript, insights, usage) and
  ``GET /api/admin/calls/{id}/usage`` its ledger rows.

A customer key is 403 ``operator_only`` on every route here, no credential 401.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Depends, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel

from flow.api.deps import SupabaseDep, require_operator
from flow.api.errors import ERROR_RESPONSES, ApiError, ErrorBody
from flow.api.ranges import report_range
from flow.api.routes.bot_models import ThreadOut, thread_out
from flow.api.routes.budget import BudgetOut
from flow.api.routes.call_models import (
    CallEvents,
    CallPage,
)
from flow.api.routes.calls import CallListDep, events_of
from flow.api.routes.usage import ReportQueryDep, UsageReport
from flow.api.schemas import DecimalText
from flow.billing.reports import keys_usage_body
from flow.db import budgets, reports
from flow.db import keys as keys_repo
from flow.db import telephony as telephony_repo
from flow.db import threads as threads_repo

STATIC = Path(__file__).resolve().parents[2] / "admin" / "static"

_FORBIDDEN: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorBody, "description": "An API key, not an operator token (operator_only)"}
}
router = APIRouter(
    prefix="/api/admin",
    tags=["admin"],
    responses={**ERROR_RESPONSES, **_FORBIDDEN},
    dependencies=[Depends(require_operator)],
)


page = APIRouter(include_in_schema=False)


@page.get("/admin")
async def admin_page() -> FileResponse:
    """The console: a static page that asks for an operator token (kept in the tab)."""
    return FileResponse(STATIC / "index.html", media_type="text/html")


class KeyFigures(BaseModel):
    """A key's (or every key's) figures over the period.

    Parameters:
        calls: distinct calls with usage. minutes: their summed duration (bot start
            to end), in minutes. call_seconds: the same in seconds.
        telephony_seconds: phone call legs' durations.
        cost_usd: priced cost (decimal string); cost_by_kind: the same split by
            ``llm``, ``tts``, ``stt``, ``telephony`` (and any later kind).
    """

    calls: int
    minutes: DecimalText
    call_seconds: DecimalText
    end_users: int
    events: int
    llm_calls: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    tts_characters: int
    stt_seconds: DecimalText
    telephony_seconds: DecimalText
    cost_usd: DecimalText
    cost_by_kind: dict[str, DecimalText]
    unpriced_events: int
    error_events: int


class KeyUsage(KeyFigures):
    """A key's figures over the period, and its budget as it stands now (null for a
    key without one): spent, reserved and remaining in the budget's own period."""

    api_key_id: UUID
    name: str
    owner: str | None
    key: str | None
    is_active: bool
    stripe_customer_id: str | None
    budget: BudgetOut | None


class AllKeysUsage(BaseModel):
    start: datetime
    end: datetime
    totals: KeyFigures
    keys: list[KeyUsage]


class KeyInfo(BaseModel):
    api_key_id: UUID
    name: str
    owner: str | None
    key: str | None
    is_active: bool


class KeyReport(BaseModel):
    key: KeyInfo
    report: UsageReport
    cost_by_kind: dict[str, DecimalText]
    budget: BudgetOut | None


class AdminCall(ThreadOut):
    """A call as the operator sees it: its key too."""

    api_key_id: UUID


@router.get("/usage", response_model=AllKeysUsage)
async def all_keys_usage(
    sb: SupabaseDep, start: datetime | None = None, end: datetime | None = None
) -> Response:
    """Every key's usage over [start, end) (default: the last 30 days), costliest first."""
    start_at, end_at = report_range(start, end)
    built = await keys_usage_body(sb, start_at, end_at)
    # Built and checked in SQL: passed on as its JSON text (an object), after the range.
    head = json.dumps({"start": start_at.isoformat(), "end": end_at.isoformat()})
    return Response(head[:-1].encode() + b"," + built.lstrip()[1:], media_type="application/json")


async def _key(sb: SupabaseDep, key_id: UUID) -> dict[str, Any]:
    found = await keys_repo.find_keys(sb, str(key_id))
    if not found:
        raise ApiError(404, "key_not_found", f"no API key {key_id}")
    return found[0]


@router.get(
    "/keys/{key_id}/usage",
    response_model=KeyReport,
    responses={404: {"model": ErrorBody, "description": "No such key"}},
)
async def key_usage(key_id: UUID, sb: SupabaseDep, query: ReportQueryDep) -> KeyReport:
    """One key's report over [start, end), broken down by ``group_by``."""
    row = await _key(sb, key_id)
    report, kinds, budget = await asyncio.gather(
        query.read(sb, str(key_id)),
        reports.cost_by_kind(sb, [str(key_id)], query.start, query.end),
        budgets.status(sb, str(key_id)),
    )
    return KeyReport(
        key=KeyInfo(
            api_key_id=row["id"],
            name=row["name"],
            owner=row.get("owner"),
            key=row.get("key_prefix") or row.get("unkey_key_id"),
            is_active=row["is_active"],
        ),
        report=report,
        cost_by_kind={r["kind"]: r["cost_usd"] for r in kinds},
        budget=BudgetOut.model_validate(budget) if budget is not None else None,
    )


@router.get("/calls", response_model=CallPage)
async def list_calls(
    sb: SupabaseDep, calls: CallListDep, api_key_id: UUID | None = None
) -> CallPage:
    """Calls of every key (or of ``api_key_id``), newest first."""
    return await calls.page(sb, str(api_key_id) if api_key_id else None)


_NO_CALL: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such call"}
}


async def _call(sb: SupabaseDep, thread_id: UUID) -> dict[str, Any]:
    row = await threads_repo.get_thread(sb, thread_id)
    if row is None:
        raise ApiError(404, "thread_not_found", f"no call {thread_id}")
    return row


@router.get("/calls/{workflow_thread_id}", response_model=AdminCall, responses=_NO_CALL)
async def get_call(workflow_thread_id: UUID, sb: SupabaseDep) -> AdminCall:
    """Any key's call: status, timestamps, error, usage, transcript and insights."""
    row = await _call(sb, workflow_thread_id)
    sid = await telephony_repo.call_sid_of(sb, row)
    return AdminCall(**thread_out(row, sid).model_dump(), api_key_id=row["api_key_id"])


@router.get("/calls/{workflow_thread_id}/usage", response_model=CallEvents, responses=_NO_CALL)
async def call_usage(workflow_thread_id: UUID, sb: SupabaseDep) -> CallEvents:
    """Any key's call's ledger rows, oldest first."""
    await _call(sb, workflow_thread_id)
    return await events_of(sb, workflow_thread_id)
