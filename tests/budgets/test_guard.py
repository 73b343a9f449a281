"""The budget guard's arithmetic, on a call with only its own limit (no database): the
cost so far to the event, the next turn's prediction, and when it says stop."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any, cast

from flow.bot.budget_guard import BudgetGuard
from flow.bot.contract import CallBudget
from flow.metering.events import UsageEvent, UsageKind

THREAD, KEY = uuid.uuid4(), uuid.uuid4()


def event(usd: str | None, event_id: uuid.UUID | None = None) -> UsageEvent:
    return UsageEvent(
        id=event_id or uuid.uuid4(),
        workflow_thread_id=THREAD,
        api_key_id=KEY,
        kind=UsageKind.TTS,
        provider="openai",
        model="tts-1",
        characters=1,
        cost_usd=None if usd is None else Decimal(usd),
    )


def guard(max_cost_usd: str, goodbye_usd: str = "0") -> tuple[BudgetGuard, list[str]]:
    ended: list[str] = []
    g = BudgetGuard(
        cast(Any, None),
        str(THREAD),
        CallBudget(key_limited=False, max_cost_usd=Decimal(max_cost_usd)),
        poll_seconds=1.0,
        on_exhausted=lambda: ended.append("ended"),
        goodbye_usd=Decimal(goodbye_usd),
    )
    return g, ended


async def test_an_estimate_logged_ahead_is_replaced_by_the_replys_own_event() -> None:
    g, ended = guard("10")
    reply = uuid.uuid4()
    g.on_usage(event("0.30", reply))  # provisional, at the first token
    g.on_usage(event("0.25", reply))  # the reported usage, same id
    g.on_usage(event(None))  # unpriced: not counted
    assert g.cost_usd == Decimal("0.25")
    assert g.remaining_usd() == [(Decimal("9.75"), 1)] and ended == []


async def test_the_next_turn_is_predicted_from_the_last_one_and_its_growth() -> None:
    g, ended = guard("100")
    assert await g.allow_reply()
    g.on_usage(event("1"))
    assert g.predicted_reply_usd() == Decimal("1")  # the turn in progress so far
    assert await g.allow_reply()
    g.on_usage(event("1.5"))
    assert await g.allow_reply()
    # Turns cost 1 then 1.5: the next is expected at 1.5 + 0.5.
    assert g.predicted_reply_usd() == Decimal("2")
    assert ended == []


async def test_a_reply_that_would_cross_with_the_goodbye_is_refused_once() -> None:
    g, ended = guard("3", goodbye_usd="0.5")
    assert await g.allow_reply()
    g.on_usage(event("1"))
    assert await g.allow_reply()  # 2 left: a turn of 1 and the goodbye fit
    g.on_usage(event("1"))
    # 1 left, a turn of 1 and the goodbye of 0.5 would not fit: the guard says stop as
    # soon as it knows, before the caller even speaks again.
    assert ended == ["ended"] and g.exhausted
    assert not await g.allow_reply()
    g.on_usage(event("0.5"))  # the goodbye
    assert ended == ["ended"]
    assert g.cost_usd == Decimal("2.5") <= Decimal("3")


async def test_a_first_reply_that_costs_more_than_remained_ends_the_call_at_its_usage() -> None:
    g, ended = guard("0.5")
    assert await g.allow_reply()  # nothing is known yet of what a reply costs
    g.on_usage(event("0.8"))
    assert ended == ["ended"]
    assert g.remaining_usd() == [(Decimal("-0.3"), 1)]
