"""A key's calls: every one of them, paged and filtered, and each call's ledger rows.

``GET /api/bot`` lists the calling key's calls newest first (filters: status, end user,
creation date), ``GET /api/bot/{id}/usage`` returns one call's ledger rows: every event
with its kind, model, counts, cost and whether it was estimated. Another key's call is
404, like a missing one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query

from flow.api.deps import ApiKeyDep, SupabaseDep
from flow.api.errors import ERROR_RESPONSES, ApiError, ErrorBody
from flow.api.ranges import utc
from flow.api.routes.call_models import (
    CallEvents,
    CallPage,
    CallStatusName,
    LedgerEvent,
    call_page,
    parse_cursor,
)
from flow.db import reports
from flow.db import threads as threads_repo
from flow.db.usage import thread_usage_events

router = APIRouter(prefix="/api/bot", tags=["bots"], responses=ERROR_RESPONSES)

Limit = Annotated[int, Query(ge=1, le=200, description="Calls per page")]
Cursor = Annotated[str | None, Query(max_length=200, description="next_cursor of the last page")]
EndUser = Annotated[str | None, Query(max_length=255, description="Only this end user's calls")]
Since = Annotated[datetime | None, Query(description="Only calls created at or after (UTC)")]
Until = Annotated[datetime | None, Query(description="Only calls created before (UTC)")]


def call_filter(
    api_key_id: str | None,
    status: CallStatusName | None,
    end_user_id: str | None,
    start: datetime | None,
    end: datetime | None,
) -> reports.CallFilter:
    return reports.CallFilter(
        api_key_id=api_key_id,
        status=status,
        end_user_id=end_user_id,
        start=utc(start, "start") if start else None,
        end=utc(end, "end") if end else None,
    )


async def events_of(sb: SupabaseDep, thread_id: UUID) -> CallEvents:
    rows = await thread_usage_events(sb, str(thread_id))
    return CallEvents(events=[LedgerEvent.model_validate(r) for r in rows])


@router.get("", response_model=CallPage)
async def list_calls(
    api_key: ApiKeyDep,
    sb: SupabaseDep,
    status: CallStatusName | None = None,
    end_user_id: EndUser = None,
    start: Since = None,
    end: Until = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> CallPage:
    """The calling key's calls, newest first, with what each cost so far."""
    where = call_filter(api_key.id, status, end_user_id, start, end)
    rows = await reports.list_calls(sb, where, limit=limit, after=parse_cursor(cursor))
    return call_page(rows, limit)


@router.get(
    "/{workflow_thread_id}/usage",
    response_model=CallEvents,
    responses={404: {"model": ErrorBody, "description": "No such call for this key"}},
)
async def call_usage(workflow_thread_id: UUID, api_key: ApiKeyDep, sb: SupabaseDep) -> CallEvents:
    """The call's ledger rows, oldest first."""
    if await threads_repo.get_thread(sb, workflow_thread_id, api_key.id) is None:
        raise ApiError(404, "thread_not_found", f"no call {workflow_thread_id} for this API key")
    return await events_of(sb, workflow_thread_id)
