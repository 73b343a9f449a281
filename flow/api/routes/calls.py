"""A key's calls: every one of them, paged and filtered, and each call's ledger rows.

``GET /api/bot`` lists the calling key's calls newest first (filters: status, end user,
creation date), ``GET /api/bot/{id}/usage`` returns one call's ledger rows: every event
with its kind, model, counts, cost and whether it was estimated. Another key's call is
404, like a missing one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Query
from supabase import AsyncClient

from flow.api.deps import ApiKeyDep, SupabaseDep
from flow.api.errors import ERROR_RESPONSES, ApiError, ErrorBody
from flow.api.ranges import utc
from flow.api.routes.call_models import (
    CallEvents,
    CallPage,
    LedgerEvent,
    call_page,
    parse_cursor,
)
from flow.db import reports
from flow.db import threads as threads_repo
from flow.db.call_state import CallStatus
from flow.db.usage import thread_usage_events

router = APIRouter(prefix="/api/bot", tags=["bots"], responses=ERROR_RESPONSES)

Limit = Annotated[int, Query(ge=1, le=200, description="Calls per page")]
Cursor = Annotated[str | None, Query(max_length=200, description="next_cursor of the last page")]
EndUser = Annotated[str | None, Query(max_length=255, description="Only this end user's calls")]
Since = Annotated[datetime | None, Query(description="Only calls created at or after (UTC)")]
Until = Annotated[datetime | None, Query(description="Only calls created before (UTC)")]


@dataclass(frozen=True)
class CallList:
    """A call listing's filters and page, from its query (``GET /api/bot`` and the
    operator's ``GET /api/admin/calls``)."""

    where: reports.CallFilter
    limit: int
    after: tuple[str, str] | None

    async def page(self, sb: AsyncClient, api_key_id: str | None) -> CallPage:
        """The page of ``api_key_id``'s calls (every key's for None), newest first."""
        where = replace(self.where, api_key_id=api_key_id)
        rows = await reports.list_calls(sb, where, limit=self.limit, after=self.after)
        return call_page(rows, self.limit)


def call_list(
    status: CallStatus | None = None,
    end_user_id: EndUser = None,
    start: Since = None,
    end: Until = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> CallList:
    where = reports.CallFilter(
        status=status,
        end_user_id=end_user_id,
        start=utc(start, "start") if start else None,
        end=utc(end, "end") if end else None,
    )
    return CallList(where, limit, parse_cursor(cursor))


CallListDep = Annotated[CallList, Depends(call_list)]


async def events_of(sb: SupabaseDep, thread_id: UUID) -> CallEvents:
    rows = await thread_usage_events(sb, str(thread_id))
    return CallEvents(events=[LedgerEvent.model_validate(r) for r in rows])


@router.get("", response_model=CallPage)
async def list_calls(api_key: ApiKeyDep, sb: SupabaseDep, calls: CallListDep) -> CallPage:
    """The calling key's calls, newest first, with what each cost so far."""
    return await calls.page(sb, api_key.id)


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
