"""The calling key's budget: its limit, what it has spent and reserved, what remains.

Computed in SQL (``budget_status``), the same figures every instance enforces: spent
is the ledger's priced cost in the period outside live calls, reserved the live calls'
cost so far, remaining = limit - spent - reserved (it may go below zero by at most one
turn plus the goodbye line per live call). Money is decimal strings.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from flow.api.deps import ApiKeyDep, SupabaseDep
from flow.api.errors import ERROR_RESPONSES, ApiError, ErrorBody
from flow.api.schemas import DecimalText
from flow.db import budgets

router = APIRouter(prefix="/api/budget", tags=["budget"], responses=ERROR_RESPONSES)


class BudgetAlertOut(BaseModel):
    """An alert sent in the current period.

    Parameters:
        type: ``budget.threshold`` or ``budget.exhausted``.
        fraction: the fraction of the limit crossed (1 for ``budget.exhausted``).
        spent_usd / reserved_usd / limit_usd: the figures when it was crossed.
    """

    type: Literal["budget.threshold", "budget.exhausted"]
    fraction: DecimalText
    spent_usd: DecimalText
    reserved_usd: DecimalText
    limit_usd: DecimalText
    sent_at: datetime


class BudgetOut(BaseModel):
    """A key's budget as it stands.

    Parameters:
        limit_usd: the most the key may spend in a period.
        period: ``day``, ``month`` (calendar, UTC) or ``total``.
        period_start / resets_at: the current period (null for ``total``).
        spent_usd: the ledger's priced cost in the period, live calls aside.
        reserved_usd: the live calls' cost so far (pending, starting, running).
        remaining_usd: limit - spent - reserved; a join is refused at zero or below.
        unpriced_events: usage in the period recorded without a price (not counted).
        live_calls: calls pending, starting or running.
        max_call_usd: the most one call may cost (a join may lower it).
        max_concurrent_calls: the most live calls at once.
        alert_at: fractions of the limit whose crossing sends ``budget.threshold``.
        alerts_sent: the alerts sent in this period.
    """

    limit_usd: DecimalText
    period: Literal["day", "month", "total"]
    period_start: datetime | None
    resets_at: datetime | None
    spent_usd: DecimalText
    reserved_usd: DecimalText
    remaining_usd: DecimalText
    unpriced_events: int
    live_calls: int
    max_call_usd: DecimalText | None
    max_concurrent_calls: int | None
    alert_at: list[DecimalText] = Field(default_factory=list)
    alerts_sent: list[BudgetAlertOut] = Field(default_factory=list)


@router.get(
    "",
    response_model=BudgetOut,
    responses={404: {"model": ErrorBody, "description": "The key has no budget"}},
)
async def get_budget(api_key: ApiKeyDep, sb: SupabaseDep) -> BudgetOut:
    """The calling key's budget, spending and alerts in the current period."""
    state = await budgets.status(sb, api_key.id)
    if state is None:
        raise ApiError(404, "no_budget", "this key has no budget (the operator sets one)")
    return BudgetOut.model_validate(state)
