"""Budgets at the API: refused joins (402, 429) create nothing and say why, a join's
max_cost_usd lowers the key's per-call limit, GET /api/budget, and the concurrency
limit held across two app instances on one database."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import httpx
from supabase import AsyncClient

from flow.bot.contract import CallBudget
from flow.config import Settings
from flow.db.client import call, rows_of
from tests.api.conftest import bearer, serve
from tests.api.recording_runner import RecordingRunner
from tests.api.test_webrtc import webrtc_join
from tests.budgets.support import spend, with_budget

JOIN = {"transport": "simulated", "script": ["hello"], "process_insights": False}


async def key_threads(sb: AsyncClient, key_id: str) -> list[dict[str, Any]]:
    res = await call(
        lambda: (
            sb.table("workflow_threads")
            .select("workflow_thread_id,status")
            .eq("api_key_id", key_id)
            .execute()
        )
    )
    return rows_of(res)


async def test_a_join_past_the_budget_is_402_with_the_figures_and_creates_nothing(
    client: httpx.AsyncClient,
    sb: AsyncClient,
    api_key: dict[str, Any],
    auth: dict[str, str],
    runner: RecordingRunner,
) -> None:
    key_id = await with_budget(sb, api_key, limit_usd=Decimal("0.50"), period="day")
    await spend(sb, key_id, "0.50")
    before = await key_threads(sb, key_id)

    res = await client.post("/api/bot/join", json=JOIN, headers=auth)
    assert res.status_code == 402, res.text
    body = res.json()
    assert body["error"] == "budget_exhausted" and "budget" in body["message"]
    assert Decimal(body["spent_usd"]) == Decimal("0.5")
    assert Decimal(body["limit_usd"]) == Decimal("0.5")
    assert Decimal(body["remaining_usd"]) == 0 and body["resets_at"]
    assert await key_threads(sb, key_id) == before and runner.submitted == []

    # A WebRTC join refused after its offer was answered: the peer is closed at once.
    res = await client.post("/api/bot/join", json=webrtc_join(), headers=auth)
    assert res.status_code == 402, res.text
    assert len(runner.released) == 1 and runner.offers == {}
    assert await key_threads(sb, key_id) == before and runner.submitted == []


async def test_get_budget_shows_the_figures_and_a_key_without_one_is_404(
    client: httpx.AsyncClient, sb: AsyncClient, api_key: dict[str, Any], auth: dict[str, str]
) -> None:
    res = await client.get("/api/budget", headers=auth)
    assert res.status_code == 404 and res.json()["error"] == "no_budget"

    key_id = await with_budget(
        sb,
        api_key,
        limit_usd=Decimal("50"),
        period="month",
        alert_at=[Decimal("0.8"), Decimal("0.5")],
        max_call_usd=Decimal("2"),
        max_concurrent_calls=10,
    )
    await spend(sb, key_id, "1.25")
    await spend(sb, key_id, None)
    res = await client.get("/api/budget", headers=auth)
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["period"] == "month" and body["period_start"] and body["resets_at"]
    assert {k: Decimal(body[k]) for k in ("limit_usd", "spent_usd", "remaining_usd")} == {
        "limit_usd": Decimal("50"),
        "spent_usd": Decimal("1.25"),
        "remaining_usd": Decimal("48.75"),
    }
    assert Decimal(body["reserved_usd"]) == 0 and body["unpriced_events"] == 1
    assert Decimal(body["max_call_usd"]) == 2 and body["max_concurrent_calls"] == 10
    assert [Decimal(f) for f in body["alert_at"]] == [Decimal("0.5"), Decimal("0.8")]
    assert body["alerts_sent"] == []
    assert all(isinstance(body[k], str) for k in ("spent_usd", "reserved_usd", "limit_usd"))


async def test_a_joins_max_cost_usd_lowers_never_raises_the_keys_per_call_limit(
    client: httpx.AsyncClient,
    sb: AsyncClient,
    api_key: dict[str, Any],
    auth: dict[str, str],
    runner: RecordingRunner,
) -> None:
    async def join(max_cost_usd: str | None = None) -> CallBudget | None:
        config = {"max_cost_usd": max_cost_usd} if max_cost_usd else {}
        res = await client.post("/api/bot/join", json={**JOIN, "bot_config": config}, headers=auth)
        assert res.status_code == 202, res.text
        return runner.submitted[-1].budget

    # No budget on the key: only what the join asks for.
    assert await join() is None
    assert await join("1.5") == CallBudget(key_limited=False, max_cost_usd=Decimal("1.5"))

    await with_budget(sb, api_key, limit_usd=Decimal("50"), max_call_usd=Decimal("2"))
    assert await join() == CallBudget(key_limited=True, max_cost_usd=Decimal("2"))
    assert await join("5") == CallBudget(key_limited=True, max_cost_usd=Decimal("2"))
    assert await join("0.25") == CallBudget(key_limited=True, max_cost_usd=Decimal("0.25"))
    thread = runner.submitted[-1].workflow_thread_id
    res = await client.get(f"/api/bot/{thread}", headers=auth)
    assert res.json()["bot_config"]["max_cost_usd"] == "0.25"
    assert res.json()["end_reason"] is None  # still running

    for bad in ("0", "-1", "nan", "1e400"):
        res = await client.post(
            "/api/bot/join", json={**JOIN, "bot_config": {"max_cost_usd": bad}}, headers=auth
        )
        assert res.status_code == 422, (bad, res.text)


async def test_two_instances_on_one_database_never_admit_more_than_max_concurrent_calls(
    local_settings: Settings, sb: AsyncClient, api_key: dict[str, Any]
) -> None:
    key_id = await with_budget(sb, api_key, limit_usd=Decimal("100"), max_concurrent_calls=3)
    runners = [RecordingRunner(), RecordingRunner()]
    async with serve(local_settings, runners[0]) as one, serve(local_settings, runners[1]) as two:
        instances = [one, two]
        answers = await asyncio.gather(
            *(
                instances[n % 2].post("/api/bot/join", json=JOIN, headers=bearer(api_key))
                for n in range(10)
            )
        )
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [202] * 3 + [429] * 7, [a.text for a in answers]
    refused = [a.json() for a in answers if a.status_code == 429]
    assert {r["error"] for r in refused} == {"too_many_calls"}
    assert all(r["max_concurrent_calls"] == 3 and r["live_calls"] == 3 for r in refused)
    assert all(a.headers.get("retry-after") for a in answers if a.status_code == 429)
    assert len(await key_threads(sb, key_id)) == 3
    assert sum(len(r.submitted) for r in runners) == 3
