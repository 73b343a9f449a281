"""Budgets in SQL, against the real stack: what is spent, what live calls reserve, the
join's check-and-create, periods, and alerts claimed once."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from supabase import AsyncClient, acreate_client

from flow import localstack
from flow.db import budgets, call_state
from flow.db import threads as threads_repo
from flow.db.call_state import CallStatus
from flow.db.client import call, rows_of
from tests.budgets.support import spend, with_budget


def month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


async def running_thread(sb: AsyncClient, key_id: str) -> dict[str, Any]:
    row = await threads_repo.create_thread(
        sb, api_key_id=key_id, transport="simulated", script=["hi"]
    )
    for status in (CallStatus.STARTING, CallStatus.RUNNING):
        assert await call_state.move(sb, row["workflow_thread_id"], status)
    return row


async def test_spent_is_the_priced_ledger_of_the_period_and_unpriced_events_are_counted(
    sb: AsyncClient, api_key: dict[str, Any]
) -> None:
    key_id = await with_budget(sb, api_key, limit_usd=Decimal("1.00"), period="month")
    now = datetime.now(UTC)
    await spend(sb, key_id, "0.25")
    await spend(sb, key_id, None)
    await spend(sb, key_id, "0.50", occurred_at=month_start(now) - timedelta(hours=1))

    state = await budgets.status(sb, key_id)
    assert state is not None
    assert Decimal(state["spent_usd"]) == Decimal("0.25")
    assert Decimal(state["reserved_usd"]) == 0
    assert Decimal(state["remaining_usd"]) == Decimal("0.75")
    assert state["unpriced_events"] == 1
    start = datetime.fromisoformat(state["period_start"])
    resets = datetime.fromisoformat(state["resets_at"])
    assert start == month_start(now)
    assert resets == month_start(start + timedelta(days=32))
    assert state["alerts_sent"] == [] and state["live_calls"] == 0


async def test_a_live_calls_cost_so_far_is_reserved_and_counts_once(
    sb: AsyncClient, api_key: dict[str, Any]
) -> None:
    key_id = await with_budget(sb, api_key, limit_usd=Decimal("1.00"))
    live = await running_thread(sb, key_id)
    await spend(sb, key_id, "0.10", thread=live)
    state = await budgets.status(sb, key_id)
    assert state is not None
    assert (Decimal(state["spent_usd"]), Decimal(state["reserved_usd"])) == (0, Decimal("0.1"))
    assert state["live_calls"] == 1

    # The instance running it knows more than the ledger holds yet: that counts.
    state = await budgets.call_status(sb, live["workflow_thread_id"], Decimal("0.30"))
    assert state is not None
    assert Decimal(state["reserved_usd"]) == Decimal("0.3")
    assert Decimal(state["remaining_usd"]) == Decimal("0.7")

    # Once it ended, the ledger alone says what it spent.
    assert await call_state.move(sb, live["workflow_thread_id"], CallStatus.PROCESSING)
    state = await budgets.status(sb, key_id)
    assert state is not None
    assert (Decimal(state["spent_usd"]), Decimal(state["reserved_usd"])) == (Decimal("0.1"), 0)


async def test_a_join_when_nothing_remains_is_refused_and_creates_nothing(
    sb: AsyncClient, api_key: dict[str, Any]
) -> None:
    key_id = await with_budget(sb, api_key, limit_usd=Decimal("0.50"))
    tid = str(uuid.uuid4())
    admitted = await budgets.admit_call(
        sb, api_key_id=key_id, workflow_thread_id=tid, transport="simulated", script=["a"]
    )
    assert admitted["admitted"] is True and admitted["budgeted"] is True
    assert await threads_repo.get_thread(sb, tid) is not None

    await spend(sb, key_id, "0.50")
    refused_id = str(uuid.uuid4())
    refused = await budgets.admit_call(
        sb, api_key_id=key_id, workflow_thread_id=refused_id, transport="simulated", script=["a"]
    )
    assert refused["admitted"] is False and refused["error"] == "budget_exhausted"
    assert Decimal(refused["remaining_usd"]) <= 0 and refused["resets_at"]
    assert await threads_repo.get_thread(sb, refused_id) is None


async def test_a_key_without_a_budget_is_admitted_and_has_no_state(
    sb: AsyncClient, api_key: dict[str, Any]
) -> None:
    tid = str(uuid.uuid4())
    answer = await budgets.admit_call(
        sb,
        api_key_id=api_key["id"],
        workflow_thread_id=tid,
        transport="simulated",
        script=["a"],
        bot_config={"voice": "x"},
        metadata={"n": 1},
    )
    assert answer == {"admitted": True, "budgeted": False, "max_call_usd": None}
    row = await threads_repo.get_thread(sb, tid)
    assert row is not None
    assert (row["status"], row["bot_config"], row["metadata"]) == (
        "pending",
        {"voice": "x"},
        {"n": 1},
    )
    assert row["usage_stats"] == {"posthog_trace_id": tid}
    assert await budgets.status(sb, api_key["id"]) is None


async def test_concurrent_joins_on_two_connections_never_exceed_max_concurrent_calls(
    sb: AsyncClient, stack: localstack.StackInfo, api_key: dict[str, Any]
) -> None:
    key_id = await with_budget(sb, api_key, limit_usd=Decimal("100"), max_concurrent_calls=3)
    other = await acreate_client(stack.supabase_url, stack.service_role_key)
    clients = [sb, other]

    async def join(n: int) -> dict[str, Any]:
        return await budgets.admit_call(
            clients[n % 2], api_key_id=key_id, transport="simulated", script=["a"]
        )

    answers = await asyncio.gather(*(join(n) for n in range(12)))
    assert sum(a["admitted"] for a in answers) == 3
    assert {a.get("error") for a in answers if not a["admitted"]} == {"too_many_calls"}
    res = await call(
        lambda: (
            sb.table("workflow_threads")
            .select("workflow_thread_id")
            .eq("api_key_id", key_id)
            .execute()
        )
    )
    assert len(rows_of(res)) == 3


async def test_a_day_budget_spent_yesterday_admits_a_call_today(
    sb: AsyncClient, api_key: dict[str, Any]
) -> None:
    key_id = await with_budget(sb, api_key, limit_usd=Decimal("1"), period="day")
    await spend(sb, key_id, "5", occurred_at=datetime.now(UTC) - timedelta(days=1))
    today = await budgets.admit_call(sb, api_key_id=key_id, transport="simulated", script=["a"])
    assert today["admitted"] is True
    state = await budgets.status(sb, key_id)
    assert state is not None and Decimal(state["spent_usd"]) == 0
    assert datetime.fromisoformat(state["period_start"]) == datetime.now(UTC).replace(
        hour=0, minute=0, second=0, microsecond=0
    )

    # The same spending against a total budget is never forgotten.
    await with_budget(sb, api_key, limit_usd=Decimal("1"), period="total")
    total = await budgets.admit_call(sb, api_key_id=key_id, transport="simulated", script=["a"])
    assert total["admitted"] is False and total["error"] == "budget_exhausted"
    assert total["period_start"] is None and total["resets_at"] is None


async def test_each_alert_is_claimed_once_per_period_however_many_ask(
    sb: AsyncClient, api_key: dict[str, Any]
) -> None:
    key_id = await with_budget(
        sb, api_key, limit_usd=Decimal("1"), period="day", alert_at=[Decimal("0.5"), Decimal("0.8")]
    )
    # Yesterday's alerts belong to yesterday's period.
    yesterday = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    yesterday -= timedelta(days=1)
    await call(
        lambda: (
            sb.table("budget_alerts")
            .insert(
                {
                    "api_key_id": key_id,
                    "period_start": yesterday.isoformat(),
                    "kind": "threshold",
                    "fraction": "0.5",
                    "period": "day",
                    "spent_usd": "0.6",
                    "reserved_usd": "0",
                    "limit_usd": "1",
                }
            )
            .execute()
        )
    )

    async def claim_everywhere() -> list[dict[str, Any]]:
        states = await asyncio.gather(*(budgets.status(sb, key_id, claim=True) for _ in range(8)))
        return [a for s in states if s is not None for a in s["alerts_new"]]

    assert await claim_everywhere() == []
    await spend(sb, key_id, "0.6")
    [half] = await claim_everywhere()
    assert (half["type"], half["fraction"], half["period"]) == ("budget.threshold", "0.5", "day")
    assert Decimal(half["spent_usd"]) == Decimal("0.6") and Decimal(half["limit_usd"]) == 1
    assert await claim_everywhere() == []

    await spend(sb, key_id, "0.5")  # past 0.8 and past the limit at once
    claimed = await claim_everywhere()
    assert [(a["type"], a["fraction"]) for a in claimed] == [
        ("budget.threshold", "0.8"),
        ("budget.exhausted", "1"),
    ]
    assert await claim_everywhere() == []
    state = await budgets.status(sb, key_id)
    assert state is not None
    assert [a["type"] for a in state["alerts_sent"]] == [
        "budget.threshold",
        "budget.threshold",
        "budget.exhausted",
    ]


async def test_every_finished_call_says_how_it_ended(
    sb: AsyncClient, api_key: dict[str, Any]
) -> None:
    async def ended(**fail: str) -> str | None:
        row = await running_thread(sb, api_key["id"])
        tid = row["workflow_thread_id"]
        if fail:
            assert await call_state.fail(sb, tid, stage="call", message="x", **fail)
        else:
            await threads_repo.update_thread(sb, tid, end_reason="budget_exhausted")
            assert await call_state.move(sb, tid, CallStatus.PROCESSING)
            assert await call_state.move(sb, tid, CallStatus.COMPLETED)
        found = await threads_repo.get_thread(sb, tid)
        assert found is not None
        return found["end_reason"]

    assert await ended() == "budget_exhausted"
    assert await ended(code="instance_lost") == "instance_lost"
    assert await ended(code="pipeline_error") == "error"
    assert await ended(code="shutdown") == "shutdown"


async def test_a_long_open_ledger_write_delays_no_other_call_of_the_key(
    sb: AsyncClient, stack: localstack.StackInfo, api_key: dict[str, Any]
) -> None:
    key_id = await with_budget(sb, api_key, limit_usd=Decimal("10"))
    thread = await spend(sb, key_id, "1")
    psql = await asyncio.create_subprocess_exec(
        str(localstack.PG_BIN / "psql"),
        stack.database_url,
        *("-X", "-q", "-At"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert psql.stdin is not None and psql.stdout is not None
    psql.stdin.write(
        (
            "begin;\n"
            "insert into usage_events (id, workflow_thread_id, api_key_id, occurred_at, kind,"
            " provider, model, characters, cost_usd)"
            f" values (gen_random_uuid(), '{thread['workflow_thread_id']}', '{key_id}', now(),"
            " 'tts', 'openai', 'tts-1', 1, 2) returning 1;\n"
        ).encode()
    )
    await psql.stdin.drain()
    assert (await psql.stdout.readline()).strip() == b"1"
    # Other calls of the same key, the same day, while that transaction stays open.
    for _ in range(3):
        await asyncio.wait_for(spend(sb, key_id, "1"), 10)
    state = await budgets.status(sb, key_id)
    assert state is not None and Decimal(state["spent_usd"]) == Decimal("4")
    psql.stdin.write(b"commit;\n")
    await psql.stdin.drain()
    psql.stdin.close()
    await psql.wait()
    state = await budgets.status(sb, key_id)
    assert state is not None and Decimal(state["spent_usd"]) == Decimal("6")
