"""After a call with a budget: insights only while the budget allows them, and the
alerts the call's spending crossed sent once, signed, where the key's budget (or
FLOW_BUDGET_WEBHOOK_URL) says."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import pytest
from supabase import AsyncClient

from flow.analytics.posthog import PostHogAnalytics
from flow.bot.contract import CallBudget
from flow.config import Settings
from flow.db import threads as threads_repo
from flow.workflows.bot_call import INSIGHTS_SKIPPED, BotCallWorkflow
from flow.workflows.extract_insights import InsightsExtractor
from flow.workflows.webhook import verify_signature
from tests.budgets.support import spend, with_budget
from tests.fakes.openai_json_server import OpenAIJSONServer, ScriptedAnswer
from tests.fakes.recording_sink import RecordingSink
from tests.workflows.support import (
    GOOD_INSIGHTS,
    FakeCallResult,
    call_request,
    good_answer,
    new_thread,
    workflow_settings,
)


@pytest.fixture(scope="module")
def openai_server() -> Iterator[OpenAIJSONServer]:
    server = OpenAIJSONServer([ScriptedAnswer(good_answer())]).start()
    yield server
    server.stop()


@pytest.fixture
async def sink() -> AsyncIterator[RecordingSink]:
    started = await RecordingSink().start()
    yield started
    await started.stop()


def workflow(settings: Settings, sb: AsyncClient, server: OpenAIJSONServer, **kw: Any) -> Any:
    s = workflow_settings(
        settings,
        openai_base_url=server.base_url,
        posthog_api_key="",
        flow_webhook_secret="whsec-budget-tests",
        flow_allow_private_urls=True,
        **kw,
    )
    analytics = PostHogAnalytics.from_settings(s)
    return BotCallWorkflow(s, sb, analytics, insights=InsightsExtractor(s, sb, analytics))


async def test_insights_run_only_while_the_budget_allows_them(
    settings: Settings, sb: AsyncClient, api_key: dict[str, Any], openai_server: OpenAIJSONServer
) -> None:
    flow = workflow(settings, sb, openai_server)
    key_id = await with_budget(sb, api_key, limit_usd=Decimal("1"))

    async def processed(budget: CallBudget, usd: str = "0.30") -> dict[str, Any]:
        thread = await new_thread(sb, api_key)
        await spend(sb, key_id, usd, thread=thread)
        await flow.post_call(call_request(thread, budget=budget), FakeCallResult())
        await flow.drain()
        row = await threads_repo.get_thread(sb, thread["workflow_thread_id"])
        assert row is not None and row["status"] == "completed", row
        return row

    openai_server.script(ScriptedAnswer(good_answer()))
    assert (await processed(CallBudget(key_limited=True)))["insights"] == GOOD_INSIGHTS
    # The call's own limit is spent: no insights, the call still completes.
    own = await processed(CallBudget(key_limited=True, max_cost_usd=Decimal("0.30")))
    assert own["insights"] == INSIGHTS_SKIPPED
    # The key's budget is spent (0.6 and the first insights so far, 0.4 by this call).
    spent = await processed(CallBudget(key_limited=True), usd="0.40")
    assert spent["insights"] == INSIGHTS_SKIPPED
    assert len(openai_server.requests) == 1


async def test_a_calls_end_sends_the_alerts_it_crossed_once_to_the_budget_webhook(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    openai_server: OpenAIJSONServer,
    sink: RecordingSink,
) -> None:
    flow = workflow(settings, sb, openai_server, flow_budget_webhook_url=f"{sink.url}/alerts")
    key_id = await with_budget(sb, api_key, limit_usd=Decimal("1"), alert_at=[Decimal("0.5")])
    for _ in range(2):  # the second call's end finds nothing new to send
        thread = await new_thread(sb, api_key, process_insights=False)
        await spend(sb, key_id, "0.6", thread=thread)
        await flow.post_call(call_request(thread, budget=CallBudget(True)), FakeCallResult())
        await flow.drain()

    assert [r["path"] for r in sink.requests] == ["/alerts", "/alerts"]
    bodies = [json.loads(r["body"]) for r in sink.requests]
    assert [b["type"] for b in bodies] == ["budget.threshold", "budget.exhausted"]
    assert bodies[0]["data"]["fraction"] == "0.5" and "fraction" not in bodies[1]["data"]
    assert Decimal(bodies[1]["data"]["spent_usd"]) == Decimal("1.2")
    for request in sink.requests:
        header = request["headers"]["Flow-Signature"]
        assert verify_signature("whsec-budget-tests", header, request["body"])
        assert request["headers"]["Flow-Event"] in ("budget.threshold", "budget.exhausted")
