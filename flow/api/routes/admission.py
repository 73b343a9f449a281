"""A call's admission against its key's budget, shared by every way a call starts (a
join, a phone call to one of Flow's numbers, a call Flow places): the refusal a join
answers, and what an admitted call may spend."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from supabase import AsyncClient

from flow.api.errors import ApiError
from flow.api.routes.bot_models import BudgetRefusal
from flow.bot.contract import CallBudget
from flow.db import budgets

# A key at its concurrency limit may retry when one of its calls has ended.
TOO_MANY_CALLS_RETRY_AFTER_SECONDS = 5
_ERROR_KEYS = ("error", "message")


def budget_refusal(state: dict[str, Any]) -> ApiError:
    """The answer to a join the key's budget refused, with the budget's figures."""
    fields = {k: state.get(k) for k in BudgetRefusal.model_fields if k not in _ERROR_KEYS}
    if state["error"] == "too_many_calls":
        message = (
            f"the key already has {state['live_calls']} live calls, the most it may have "
            "at once; retry when one has ended"
        )
        headers = {"Retry-After": str(TOO_MANY_CALLS_RETRY_AFTER_SECONDS)}
        return ApiError(429, "too_many_calls", message, headers=headers, fields=fields)
    resets = f"; it resets at {state['resets_at']}" if state.get("resets_at") else ""
    message = (
        f"the key's {state['period']} budget of {state['limit_usd']} USD is spent "
        f"({state['remaining_usd']} remaining){resets}"
    )
    return ApiError(402, "budget_exhausted", message, fields=fields)


def call_budget(state: dict[str, Any], asked_usd: Decimal | None) -> CallBudget | None:
    """What the call may spend: the key's budget (if any), and its own limit, the key's
    ``max_call_usd`` lowered (never raised) by the call's ``max_cost_usd``."""
    limits = [Decimal(v) for v in (state.get("max_call_usd"), asked_usd) if v is not None]
    own = min(limits) if limits else None
    if not state["budgeted"] and own is None:
        return None
    return CallBudget(key_limited=bool(state["budgeted"]), max_cost_usd=own)


async def stream_budget(
    sb: AsyncClient, api_key_id: str, asked_usd: Decimal | None
) -> CallBudget | None:
    """What a phone call admitted earlier (its thread exists) may spend, read when its
    media arrives."""
    state = await budgets.status(sb, api_key_id)
    budgeted = {"budgeted": state is not None, "max_call_usd": (state or {}).get("max_call_usd")}
    return call_budget(budgeted, asked_usd)
