"""``flow reprice``: events recorded unpriced are priced from the current table, in the
ledger (with the price's source), the call's usage_stats, the hourly rollups and the
key's daily spend that budgets read, at once; a dry run changes nothing; a second run
adds nothing."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from supabase import AsyncClient

from flow import localstack
from flow.billing.reprice import reprice
from flow.db import budgets
from flow.db import keys as keys_repo
from flow.db import threads as threads_repo
from flow.db.client import call, rows_of
from flow.db.usage import record_usage_events, usage_report
from flow.metering.events import UsageEvent, UsageKind
from flow.metering.pricing import PriceBook
from tests.integration.test_cli_usage import flow_cli
from tests.integration.test_ledger import llm_event

OVERRIDES = {"mystery-model": {"input": "1.5", "output": "6"}}
VOICE = {
    "openai/mystery-tts": {"per_character": "0.00002"},
    "twilio/mystery-line": {"per_minute": "0.0085"},
}
BOOK = PriceBook(
    {k: {r: Decimal(v) for r, v in rates.items()} for k, rates in OVERRIDES.items()},
    {k: {r: Decimal(v) for r, v in rates.items()} for k, rates in VOICE.items()},
)


async def unpriced_call(sb: AsyncClient) -> tuple[dict[str, Any], dict[str, Any], list[UsageEvent]]:
    key, _ = await keys_repo.create_local_key(sb, f"reprice-{uuid.uuid4().hex[:6]}")
    thread = await threads_repo.create_thread(
        sb, api_key_id=key["id"], transport="simulated", end_user_id="ada"
    )
    at = datetime.now(UTC).replace(minute=20, second=0, microsecond=0) - timedelta(hours=2)
    events = [llm_event(thread, occurred_at=at, end_user_id="ada")]
    events += [
        UsageEvent(
            workflow_thread_id=thread["workflow_thread_id"],
            api_key_id=key["id"],
            end_user_id="ada",
            occurred_at=at + timedelta(minutes=n),
            kind=UsageKind.LLM,
            category="insights" if n == 2 else "bot",
            provider="openai",
            model="mystery-model",
            input_tokens=1000 * (n + 1),
            output_tokens=100 * (n + 1),
        )
        for n in range(3)
    ]
    events.append(
        UsageEvent(
            workflow_thread_id=thread["workflow_thread_id"],
            api_key_id=key["id"],
            end_user_id="ada",
            occurred_at=at + timedelta(minutes=5),
            kind=UsageKind.TTS,
            provider="openai",
            model="mystery-tts",
            characters=250,
        )
    )
    events.append(
        UsageEvent(
            workflow_thread_id=thread["workflow_thread_id"],
            api_key_id=key["id"],
            occurred_at=at + timedelta(minutes=6),
            kind=UsageKind.LLM,
            provider="openai",
            model="still-unknown",
            input_tokens=10,
        )
    )
    events.append(  # a phone call leg: per started minute, 2 minutes
        UsageEvent(
            workflow_thread_id=thread["workflow_thread_id"],
            api_key_id=key["id"],
            end_user_id="ada",
            occurred_at=at + timedelta(minutes=7),
            kind=UsageKind.TELEPHONY,
            provider="twilio",
            model="mystery-line",
            audio_seconds=Decimal("61.25"),
        )
    )
    await record_usage_events(sb, events)
    return key, thread, events


def expected_added(events: list[UsageEvent]) -> Decimal:
    added = Decimal(0)
    for e in events:
        if e.model == "mystery-model":
            added += (e.input_tokens * Decimal("1.5") + e.output_tokens * Decimal(6)) / 10**6
        elif e.model == "mystery-tts":
            added += e.characters * Decimal("0.00002")
        elif e.model == "mystery-line":
            added += 2 * Decimal("0.0085")
    return added


async def daily_spend(sb: AsyncClient, key_id: str) -> tuple[Decimal, int]:
    """What budgets read: the key's spend summed over its days, and its unpriced events."""
    rows = rows_of(
        await call(
            sb.table("usage_spend_daily")
            .select("cost_usd::text,unpriced_events")
            .eq("api_key_id", key_id)
            .execute
        )
    )
    return (
        sum((Decimal(r["cost_usd"]) for r in rows), Decimal(0)),
        sum(int(r["unpriced_events"]) for r in rows),
    )


async def test_repricing_prices_the_ledger_stats_and_rollups_once(sb: AsyncClient) -> None:
    key, thread, events = await unpriced_call(sb)
    start = min(e.occurred_at for e in events) - timedelta(minutes=10)  # partial hours
    end = max(e.occurred_at for e in events) + timedelta(minutes=50)
    before = await usage_report(sb, str(key["id"]), start, end, "model")
    assert before["totals"]["unpriced_events"] == 6
    await budgets.set_budget(sb, str(key["id"]), budgets.Budget(Decimal(100), period="total"))
    budget_before = await budgets.status(sb, str(key["id"]))
    assert budget_before is not None and budget_before["unpriced_events"] == 6
    spend_before = await daily_spend(sb, str(key["id"]))

    dry = await reprice(sb, BOOK, key_ids=[str(key["id"])])
    assert dry.priced == 5 and dry.still_unpriced == 1 and dry.cost_usd == expected_added(events)
    assert await usage_report(sb, str(key["id"]), start, end, "model") == before

    done = await reprice(sb, BOOK, key_ids=[str(key["id"])], apply=True)
    assert done.recorded == 5 and done.recorded_cost_usd == expected_added(events)
    after = await usage_report(sb, str(key["id"]), start, end, "model")
    added = Decimal(after["totals"]["cost_usd"]) - Decimal(before["totals"]["cost_usd"])
    assert added == expected_added(events)
    assert after["totals"]["unpriced_events"] == 1
    assert after["totals"]["telephony_seconds"] == before["totals"]["telephony_seconds"]
    by_model = {g["key"]: g for g in after["groups"]}
    assert by_model["mystery-model"]["unpriced_events"] == 0
    assert Decimal(by_model["mystery-line"]["cost_usd"]) == 2 * Decimal("0.0085")
    assert Decimal(by_model["mystery-line"]["telephony_seconds"]) == Decimal("61.25")

    # Budgets count the repriced cost on the event's day, one unpriced event fewer each.
    spend_after = await daily_spend(sb, str(key["id"]))
    assert spend_after[0] - spend_before[0] == expected_added(events)
    assert spend_before[1] - spend_after[1] == 5
    budget_after = await budgets.status(sb, str(key["id"]))
    assert budget_after is not None and budget_after["unpriced_events"] == 1
    used = {
        name: Decimal(state["spent_usd"]) + Decimal(state["reserved_usd"])
        for name, state in (("before", budget_before), ("after", budget_after))
    }
    assert used["after"] - used["before"] == expected_added(events)
    for grouping in ("day", "kind", "category", "end_user", None):  # both rollups agree
        report = await usage_report(sb, str(key["id"]), start, end, grouping)
        assert report["totals"] == after["totals"], grouping

    row = await threads_repo.get_thread(sb, thread["workflow_thread_id"])
    assert row is not None
    stats = row["usage_stats"]
    assert stats["unpriced_events"] == 1
    assert stats["telephony_seconds"] == Decimal("61.25")
    assert stats["total_cost_usd"] == sum(e.cost_usd or 0 for e in events) + expected_added(events)
    assert stats["models_used"]["mystery-model"]["calls"] == 3
    assert stats["models_used"]["mystery-model"]["input_tokens"] == 6000
    insights = [e for e in events if e.category == "insights"]
    assert stats["insights_cost_usd"] == expected_added(insights)

    ledger = rows_of(
        await call(
            sb.table("usage_events")
            .select("id,cost_usd::text,price_source")
            .eq("workflow_thread_id", thread["workflow_thread_id"])
            .execute
        )
    )
    repriced = [r for r in ledger if r["price_source"] == "override"]
    assert len(repriced) == 5
    corrections = rows_of(
        await call(
            sb.table("usage_corrections")
            .select("event_id,cost_usd::text")
            .in_("event_id", [r["id"] for r in repriced])
            .execute
        )
    )
    assert {c["event_id"]: c["cost_usd"] for c in corrections} == {
        r["id"]: r["cost_usd"] for r in repriced
    }

    again = await reprice(sb, BOOK, key_ids=[str(key["id"])], apply=True)
    assert again.recorded == 0 and again.still_unpriced == 1
    assert await usage_report(sb, str(key["id"]), start, end, "model") == after


async def test_flow_reprice_is_a_dry_run_unless_told(
    stack: localstack.StackInfo, sb: AsyncClient
) -> None:
    key, _, events = await unpriced_call(sb)
    env = {
        "FLOW_PRICE_OVERRIDES": json.dumps(OVERRIDES),
        "FLOW_VOICE_PRICES": json.dumps(VOICE),
    }
    dry = flow_cli(stack, "reprice", "--key", str(key["id"]), **env)
    assert dry.returncode == 0, dry.stderr
    assert "5 event(s) priced" in dry.stdout and "dry run" in dry.stdout
    assert "1 event(s) still have no price" in dry.stdout
    out = flow_cli(stack, "reprice", "--key", str(key["id"]), "--apply", "--json", **env)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["recorded"] == 5
    assert Decimal(summary["recorded_cost_usd"]) == expected_added(events)
    assert summary["by_model"]["openai/mystery-model"]["price_source"] == "override"
    assert summary["by_model"]["twilio/mystery-line"]["price_source"] == "override"
    since = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    later = flow_cli(stack, "reprice", "--since", since, "--json", **env)
    assert json.loads(later.stdout)["priced"] == 0
