"""``api_key_budgets`` and the SQL functions that enforce them.

A budget caps what one API key spends per period (``day`` or ``month``, calendar UTC,
or ``total``). Every figure is computed in SQL, the same on every instance:

- ``spent_usd``: the ledger's priced cost in the period, outside the key's live calls
  (unpriced events are not counted: ``unpriced_events`` says how many there are);
- ``reserved_usd``: each live call's cost so far (pending, starting or running), as the
  instance running it reports it (:func:`call_status`) or as the ledger holds it,
  whichever is larger;
- ``remaining_usd`` = limit - spent - reserved.

:func:`admit_call` checks a join and creates its thread in one statement (the budget
row is locked while it runs), so two instances never both admit a call that only one
may start. Alerts are claimed in SQL (:func:`status` with ``claim``,
:func:`call_status`): each ``alert_at`` fraction once per period, exhaustion once.

Every function answers the state as a dict with money as decimal strings, or None for
a key without a budget. Failure behaviour: the errors of :mod:`flow.db.client`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

from supabase import AsyncClient

from flow.db.client import call, rows_of
from flow.db.threads import thread_row

Period = Literal["day", "month", "total"]
PERIODS: tuple[Period, ...] = ("day", "month", "total")


@dataclass(frozen=True)
class Budget:
    """What the operator sets on a key.

    Parameters:
        limit_usd: the most the key may spend in a period.
        period: ``day``, ``month`` (calendar, UTC) or ``total``.
        alert_at: fractions of the limit (0 < f < 1) whose crossing sends an alert.
        max_call_usd: the most one call may cost (a join may lower it).
        max_concurrent_calls: the most live calls (pending, starting, running) at once.
        webhook_url: where the key's alerts go (else ``FLOW_BUDGET_WEBHOOK_URL``).
    """

    limit_usd: Decimal
    period: Period = "month"
    alert_at: Sequence[Decimal] = ()
    max_call_usd: Decimal | None = None
    max_concurrent_calls: int | None = None
    webhook_url: str | None = None

    def row(self, api_key_id: str) -> dict[str, Any]:
        return {
            "api_key_id": api_key_id,
            "limit_usd": str(self.limit_usd),
            "period": self.period,
            "alert_at": [str(f) for f in sorted(set(self.alert_at))],
            "max_call_usd": None if self.max_call_usd is None else str(self.max_call_usd),
            "max_concurrent_calls": self.max_concurrent_calls,
            "webhook_url": self.webhook_url,
        }


async def set_budget(sb: AsyncClient, api_key_id: str, budget: Budget) -> None:
    """Set (or replace) a key's budget."""
    row = budget.row(str(api_key_id))
    await call(lambda: sb.table("api_key_budgets").upsert(row, on_conflict="api_key_id").execute())


async def clear_budget(sb: AsyncClient, api_key_id: str) -> bool:
    """Remove a key's budget; returns whether it had one."""
    res = await call(
        lambda: sb.table("api_key_budgets").delete().eq("api_key_id", str(api_key_id)).execute()
    )
    return bool(rows_of(res))


async def status(sb: AsyncClient, api_key_id: str, *, claim: bool = False) -> dict[str, Any] | None:
    """A key's budget as it stands (None without one). With ``claim``, the alerts it
    has crossed and nobody sent yet are claimed and listed under ``alerts_new``: the
    caller sends them."""
    res: Any = await call(
        sb.rpc("budget_status", {"p_key": str(api_key_id), "p_claim": claim}).execute
    )
    return _state(res.data)


async def states(sb: AsyncClient) -> dict[str, dict[str, Any]]:
    """Every budgeted key's budget as :func:`status` answers it, by key id, in one
    statement (``budget_states``)."""
    res: Any = await call(sb.rpc("budget_states", {}).execute)
    return {str(k): dict(v) for k, v in (res.data or {}).items() if isinstance(v, dict)}


async def call_status(
    sb: AsyncClient, thread_id: str, reserved_usd: Decimal
) -> dict[str, Any] | None:
    """A live call reports its cost so far (its reservation) and reads its key's budget,
    claiming the alerts crossed (``alerts_new``); None when the key has no budget."""
    params = {"p_thread": str(thread_id), "p_reserved_usd": str(reserved_usd)}
    res: Any = await call(sb.rpc("budget_call_status", params).execute)
    return _state(res.data)


async def admit_call(sb: AsyncClient, *, api_key_id: UUID | str, **fields: Any) -> dict[str, Any]:
    """Check a join against the key's budget and, if it passes, create its thread
    (``fields`` as for :func:`flow.db.threads.create_thread`), in one statement.

    Answers ``{"admitted": True, "budgeted": bool, "max_call_usd": str | None}``, or
    ``{"admitted": False, "error": "budget_exhausted" | "too_many_calls", ...the
    budget}`` having created nothing."""
    row = thread_row(api_key_id=api_key_id, **fields)
    res: Any = await call(sb.rpc("admit_call", {"p_thread": row}).execute)
    answer: dict[str, Any] = res.data
    return answer


def _state(data: Any) -> dict[str, Any] | None:
    return dict(data) if isinstance(data, dict) else None
