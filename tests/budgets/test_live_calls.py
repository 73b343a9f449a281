"""Budgets while calls run: real simulated calls (the real OpenAI LLM service against the
local streaming server, fake STT/TTS with known usage) joined through the API with a
real runner, over the real ledger."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from supabase import AsyncClient

from flow.analytics.posthog import PostHogAnalytics
from flow.bot.runner import BotRunner
from flow.bot.simulated import SimulatedParams
from flow.config import Settings
from flow.db import threads as threads_repo
from flow.db.client import call, rows_of
from flow.metering.pricing import PriceBook
from flow.workflows.bot_call import BotCallWorkflow, build_runner
from flow.workflows.webhook import verify_signature
from tests.api.conftest import bearer, local_mode, serve
from tests.bot.helpers import CALLER_AUDIO_SECONDS, FakeVoices, bot_settings
from tests.budgets.support import spend, with_budget
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.recording_sink import RecordingSink

REPLY = "Sure, I can help with that. Let me check it for you right now."
SCRIPT = [f"Question number {n}, please." for n in range(1, 9)]
BOOK = PriceBook()


@dataclass
class LiveFlow:
    client: httpx.AsyncClient
    runner: BotRunner
    workflow: BotCallWorkflow
    settings: Settings

    async def join(self, api_key: dict[str, Any], **body: Any) -> httpx.Response:
        payload = {"transport": "simulated", "script": SCRIPT, "process_insights": False}
        return await self.client.post(
            "/api/bot/join", json={**payload, **body}, headers=bearer(api_key)
        )

    async def finished(self, thread_id: str) -> dict[str, Any]:
        await asyncio.wait_for(self.runner.wait(thread_id), 60)
        row = await threads_repo.get_thread(self.workflow.sb, thread_id)
        assert row is not None
        return row


@pytest.fixture
async def openai_server() -> AsyncIterator[FakeOpenAI]:
    server = await FakeOpenAI(replies=[REPLY], slow_word_seconds=0.01).start()
    yield server
    await server.stop()


@asynccontextmanager
async def live_flow(
    settings: Settings, sb: AsyncClient, server: FakeOpenAI, spool: Path, **update: Any
) -> AsyncIterator[LiveFlow]:
    s = local_mode(
        bot_settings(
            settings,
            server.base_url,
            spool,
            flow_budget_poll_seconds=0.2,
            flow_allow_private_urls=True,
            **update,
        )
    )
    runner, workflow = build_runner(
        s,
        sb,
        PostHogAnalytics.from_settings(s),
        services_factory=FakeVoices(),
        simulated=SimulatedParams(caller_audio_seconds=CALLER_AUDIO_SECONDS),
    )
    async with serve(s, runner) as client:
        yield LiveFlow(client, runner, workflow, s)
    await workflow.drain()


async def ledger_of(sb: AsyncClient, column: str, value: str) -> list[dict[str, Any]]:
    res = await call(
        lambda: (
            sb.table("usage_events")
            .select("workflow_thread_id,kind,characters,cost:cost_usd::text")
            .eq(column, value)
            .execute()
        )
    )
    return rows_of(res)


def cost(rows: list[dict[str, Any]]) -> Decimal:
    return sum((Decimal(r["cost"]) for r in rows if r["cost"] is not None), Decimal(0))


def turn_and_goodbye_usd(rows: list[dict[str, Any]], goodbye: str) -> Decimal:
    """The stated bound of one live call: its costliest turn (a reply's LLM and speech,
    the caller's words before it) plus the goodbye line."""
    most = {
        kind: max((Decimal(r["cost"]) for r in rows if r["kind"] == kind), default=Decimal(0))
        for kind in ("llm", "stt")
    }
    speech, last = (BOOK.tts("openai", "tts-1", len(text)) for text in (REPLY, goodbye))
    assert speech is not None and last is not None
    return most["llm"] + most["stt"] + speech.cost_usd + last.cost_usd


def said_goodbye(row: dict[str, Any], goodbye: str) -> bool:
    assistant = [t["content"] for t in row["transcript"] if t["role"] == "assistant"]
    return bool(assistant) and assistant[-1] == goodbye


async def test_ten_calls_against_a_smaller_budget_end_with_the_goodbye_within_the_bound(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    openai_server: FakeOpenAI,
    tmp_path: Path,
) -> None:
    limit = Decimal("0.02")  # about two turns a call; the scripts would take eight each
    key_id = await with_budget(sb, api_key, limit_usd=limit, period="day")
    async with live_flow(settings, sb, openai_server, tmp_path) as flow:
        goodbye = flow.settings.flow_budget_goodbye
        joins = await asyncio.gather(*(flow.join(api_key) for _ in range(10)))
        assert [j.status_code for j in joins] == [202] * 10, [j.text for j in joins]
        first = [await flow.finished(j.json()["workflow_thread_id"]) for j in joins]
        assert {(r["status"], r["end_reason"]) for r in first} == {
            ("completed", "budget_exhausted")
        }
        assert all(said_goodbye(r, goodbye) for r in first)
        assert all(len([t for t in r["transcript"] if t["role"] == "user"]) < 8 for r in first)
        rows = await ledger_of(sb, "api_key_id", key_id)
        print(f"\nten calls: {cost(rows)} USD of a {limit} USD budget")

        # Joins go on being admitted while anything remains (each ends with the
        # goodbye), and are refused once nothing does.
        live = len(first)
        for _ in range(5):
            res = await flow.join(api_key)
            if res.status_code == 402:
                break
            assert res.status_code == 202, res.text
            live += 1
            row = await flow.finished(res.json()["workflow_thread_id"])
            assert row["end_reason"] == "budget_exhausted" and said_goodbye(row, goodbye)
        assert res.status_code == 402, res.text
        refused = res.json()
        assert refused["error"] == "budget_exhausted"
        assert Decimal(refused["limit_usd"]) == limit and refused["resets_at"]
        assert Decimal(refused["spent_usd"]) > limit - Decimal("0.001")

        rows = await ledger_of(sb, "api_key_id", key_id)
        assert len({r["workflow_thread_id"] for r in rows}) == live
        overspend = cost(rows) - limit
        bound = live * turn_and_goodbye_usd(rows, goodbye)
        print(f"then {live - 10} more: {cost(rows)} USD; overspend {overspend}, bound {bound}")
        assert overspend <= bound


async def test_a_calls_own_max_cost_ends_it_and_no_other_call(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    openai_server: FakeOpenAI,
    tmp_path: Path,
) -> None:
    max_cost = Decimal("0.0025")  # a little under three turns
    async with live_flow(settings, sb, openai_server, tmp_path) as flow:
        goodbye = flow.settings.flow_budget_goodbye
        capped = await flow.join(api_key, bot_config={"max_cost_usd": str(max_cost)})
        free = await flow.join(api_key, script=SCRIPT[:3])
        assert capped.status_code == free.status_code == 202
        capped_id = capped.json()["workflow_thread_id"]
        row = await flow.finished(capped_id)
        other = await flow.finished(free.json()["workflow_thread_id"])

        assert (row["status"], row["end_reason"]) == ("completed", "budget_exhausted")
        assert said_goodbye(row, goodbye)
        rows = await ledger_of(sb, "workflow_thread_id", capped_id)
        assert cost(rows) <= max_cost + turn_and_goodbye_usd(rows, goodbye)
        assert cost(rows) > max_cost / 2
        shown = await flow.client.get(f"/api/bot/{capped_id}", headers=bearer(api_key))
        assert shown.json()["end_reason"] == "budget_exhausted"

        assert (other["status"], other["end_reason"]) == ("completed", "completed")
        assert [t["content"] for t in other["transcript"] if t["role"] == "user"] == SCRIPT[:3]


async def test_alerts_go_once_each_to_the_keys_webhook_signed(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    openai_server: FakeOpenAI,
    tmp_path: Path,
) -> None:
    sink = await RecordingSink().start()
    try:
        limit = Decimal("0.01")
        key_id = await with_budget(
            sb,
            api_key,
            limit_usd=limit,
            alert_at=[Decimal("0.25"), Decimal("0.5")],
            webhook_url=f"{sink.url}/budget",
        )
        async with live_flow(settings, sb, openai_server, tmp_path) as flow:
            res = await flow.join(api_key)
            assert res.status_code == 202
            await flow.finished(res.json()["workflow_thread_id"])
            await spend(sb, key_id, str(limit))  # well past the limit
            for _ in range(3):
                refused = await flow.join(api_key)
                assert refused.status_code == 402
            secret = flow.settings.flow_webhook_secret.get_secret_value()
        # Leaving the flow drained the alerts in flight.
    finally:
        await sink.stop()

    sent = [(r["headers"], r["body"]) for r in sink.requests]
    bodies = [json.loads(body) for _, body in sent]
    kinds = [(b["type"], b["data"].get("fraction")) for b in bodies]
    assert sorted(kinds, key=str) == sorted(
        [("budget.threshold", "0.25"), ("budget.threshold", "0.5"), ("budget.exhausted", None)],
        key=str,
    )
    assert all(verify_signature(secret, h["Flow-Signature"], body) for h, body in sent)
    assert len({h["Flow-Event-Id"] for h, _ in sent}) == 3
    for b in bodies:
        data = b["data"]
        assert data["api_key_id"] == key_id and data["period"] == "month"
        assert Decimal(data["limit_usd"]) == limit and data["period_start"] and data["resets_at"]
        assert Decimal(data["spent_usd"]) + Decimal(data["reserved_usd"]) >= (
            limit * Decimal(data.get("fraction") or 1)
        )
