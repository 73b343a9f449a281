"""The insights step against the real stack and a local OpenAI-compatible server."""

from __future__ import annotations

import json
import socket
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from supabase import AsyncClient

from flow.analytics.posthog import PostHogAnalytics
from flow.config import Settings
from flow.db import threads as threads_repo
from flow.db.client import DatabaseUnavailable, create_client
from flow.metering.events import event_id_from
from flow.metering.spool import SPOOL_FILE, replay_spool
from flow.workflows.bot_call import BotCallWorkflow
from flow.workflows.extract_insights import InsightsExtractor, build_openai_client
from tests.fakes.openai_json_server import OpenAIJSONServer, ScriptedAnswer
from tests.workflows.support import (
    BOOK,
    GOOD_INSIGHTS,
    MALFORMED,
    FakeCallResult,
    call_request,
    good_answer,
    ledger,
    new_thread,
    workflow_settings,
)


def plain_setup(
    settings: Settings, sb: AsyncClient, server: OpenAIJSONServer
) -> tuple[Settings, PostHogAnalytics, InsightsExtractor]:
    s = workflow_settings(settings, openai_base_url=server.base_url, posthog_api_key="")
    analytics = PostHogAnalytics.from_settings(s)
    return s, analytics, InsightsExtractor(s, sb, analytics)


def test_without_posthog_the_plain_openai_client_is_used(settings: Settings) -> None:
    s = workflow_settings(settings, posthog_api_key="")
    analytics = PostHogAnalytics.from_settings(s)
    assert analytics.client is None and not analytics.enabled
    client = build_openai_client(s, analytics)
    assert type(client) is openai.AsyncOpenAI


async def test_malformed_answer_is_retried_once_and_each_completion_is_billed_once(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    openai_server: OpenAIJSONServer,
) -> None:
    openai_server.script(
        ScriptedAnswer(MALFORMED, prompt_tokens=300, completion_tokens=12),
        ScriptedAnswer(good_answer(), prompt_tokens=360, completion_tokens=55, cached_tokens=128),
    )
    _, _, extractor = plain_setup(settings, sb, openai_server)
    thread = await new_thread(sb, api_key)
    thread_id = thread["workflow_thread_id"]

    saved = await extractor.run(thread, "user: hello\nassistant: hi")

    assert saved == GOOD_INSIGHTS
    row = await threads_repo.get_thread(sb, thread_id)
    assert row is not None and row["insights"] == GOOD_INSIGHTS
    assert len(openai_server.requests) == 2
    # The retry tells the model what was wrong, with the same model and schema.
    assert openai_server.requests[1]["model"] == settings.flow_insights_model
    assert (
        openai_server.requests[1]["response_format"] == openai_server.requests[0]["response_format"]
    )
    events = await ledger(sb, thread_id)
    assert [e["category"] for e in events] == ["insights", "insights"]
    assert {e["id"] for e in events} == {
        str(event_id_from("openai-response", f"{thread_id}:{rid}"))
        for rid in openai_server.response_ids
    }
    assert [(e["input_tokens"], e["output_tokens"], e["cache_read_tokens"]) for e in events] == [
        (300, 12, 0),
        (360, 55, 128),
    ]
    for event, (i, o, c) in zip(events, [(300, 12, 0), (360, 55, 128)], strict=True):
        price = BOOK.llm(
            "openai", "gpt-4o-mini", input_tokens=i, output_tokens=o, cache_read_tokens=c
        )
        assert price is not None and event["cost_usd"] == price.total_cost_usd
    stats = row["usage_stats"]
    assert stats["llm_calls"] == 2
    assert Decimal(str(stats["insights_cost_usd"])) == sum(e["cost_usd"] for e in events)

    # Running the step again (a retry after a crash) makes no call and records nothing.
    again = await threads_repo.get_thread(sb, thread_id)
    assert again is not None
    assert await extractor.run(again, "user: hello\nassistant: hi") == GOOD_INSIGHTS
    assert len(openai_server.requests) == 2
    assert len(await ledger(sb, thread_id)) == 2


async def test_same_response_recorded_twice_counts_once(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    openai_server: OpenAIJSONServer,
) -> None:
    openai_server.script(ScriptedAnswer(good_answer(), prompt_tokens=200, completion_tokens=20))
    _, _, extractor = plain_setup(settings, sb, openai_server)
    thread = await new_thread(sb, api_key)
    client = extractor.client
    response = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
    )
    await extractor._record_usage(thread, response, Decimal("5"))
    await extractor._record_usage(thread, response, Decimal("5"))
    assert len(await ledger(sb, thread["workflow_thread_id"])) == 1
    row = await threads_repo.get_thread(sb, thread["workflow_thread_id"])
    assert row is not None and row["usage_stats"]["llm_calls"] == 1


async def test_two_bad_answers_fail_the_named_step_and_keep_the_transcript(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    openai_server: OpenAIJSONServer,
) -> None:
    openai_server.script(
        ScriptedAnswer(MALFORMED), ScriptedAnswer(json.dumps({"summary": "no fields"}))
    )
    s, analytics, extractor = plain_setup(settings, sb, openai_server)
    workflow = BotCallWorkflow(s, sb, analytics, insights=extractor)
    thread = await new_thread(sb, api_key)

    await workflow.post_call(call_request(thread), FakeCallResult())

    row = await threads_repo.get_thread(sb, thread["workflow_thread_id"])
    assert row is not None
    assert (row["status"], row["error_stage"], row["error_code"]) == (
        "failed",
        "extract_insights",
        "invalid_output",
    )
    assert "key_points" in row["error_message"]
    assert row["insights"] is None
    assert row["transcript"] and row["transcript"][1]["content"] == "When are you open?"
    assert len(await ledger(sb, thread["workflow_thread_id"])) == 2  # both calls billed


async def test_analysis_prompt_answer_is_saved_with_the_insights(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    openai_server: OpenAIJSONServer,
) -> None:
    openai_server.script(
        ScriptedAnswer(good_answer()),  # no `analysis`: does not answer the request
        ScriptedAnswer(good_answer(analysis="The caller is likely to convert.")),
    )
    _, _, extractor = plain_setup(settings, sb, openai_server)
    thread = await new_thread(sb, api_key, analysis_prompt="Will this caller convert?")

    saved = await extractor.run(thread, "user: book me in")

    assert saved == {**GOOD_INSIGHTS, "analysis": "The caller is likely to convert."}
    first = openai_server.requests[0]
    assert "Will this caller convert?" in first["messages"][1]["content"]
    assert "analysis" in first["response_format"]["json_schema"]["schema"]["required"]


async def test_unreachable_model_fails_extract_insights_with_a_code(
    settings: Settings, sb: AsyncClient, api_key: dict[str, Any]
) -> None:
    s = workflow_settings(settings, openai_base_url="http://127.0.0.1:9/v1", posthog_api_key="")
    analytics = PostHogAnalytics.from_settings(s)
    extractor = InsightsExtractor(
        s,
        sb,
        analytics,
        client=openai.AsyncOpenAI(api_key="sk-test", base_url=s.openai_base_url, max_retries=0),
    )
    workflow = BotCallWorkflow(s, sb, analytics, insights=extractor)
    thread = await new_thread(sb, api_key)

    await workflow.post_call(call_request(thread), FakeCallResult())

    row = await threads_repo.get_thread(sb, thread["workflow_thread_id"])
    assert row is not None
    assert (row["status"], row["error_stage"], row["error_code"]) == (
        "failed",
        "extract_insights",
        "llm_unavailable",
    )
    assert row["transcript"] is not None
    assert await ledger(sb, thread["workflow_thread_id"]) == []


async def test_call_without_insights_completes_after_the_transcript(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    openai_server: OpenAIJSONServer,
) -> None:
    openai_server.script(ScriptedAnswer(good_answer()))
    s, analytics, extractor = plain_setup(settings, sb, openai_server)
    workflow = BotCallWorkflow(s, sb, analytics, insights=extractor)
    thread = await new_thread(sb, api_key, process_insights=False)

    await workflow.post_call(call_request(thread), FakeCallResult())

    row = await threads_repo.get_thread(sb, thread["workflow_thread_id"])
    assert row is not None and row["status"] == "completed" and row["error_stage"] is None
    assert row["insights"] is None and row["transcript"] is not None
    assert openai_server.requests == []


async def test_post_call_run_twice_makes_one_llm_call_and_one_ledger_row(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    openai_server: OpenAIJSONServer,
) -> None:
    openai_server.script(ScriptedAnswer(good_answer(), prompt_tokens=250, completion_tokens=30))
    s, analytics, extractor = plain_setup(settings, sb, openai_server)
    workflow = BotCallWorkflow(s, sb, analytics, insights=extractor)
    thread = await new_thread(sb, api_key)

    await workflow.post_call(call_request(thread), FakeCallResult())
    first = await threads_repo.get_thread(sb, thread["workflow_thread_id"])
    await workflow.post_call(call_request(thread), FakeCallResult(transcript=[]))
    second = await threads_repo.get_thread(sb, thread["workflow_thread_id"])

    assert first is not None and second is not None
    assert second["status"] == "completed"
    assert second["insights"] == first["insights"] == GOOD_INSIGHTS
    assert second["transcript"] == first["transcript"]
    assert second["usage_stats"] == first["usage_stats"]
    assert len(openai_server.requests) == 1
    assert len(await ledger(sb, thread["workflow_thread_id"])) == 1


async def test_usage_of_a_completion_survives_the_database_going_down_after_it(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    openai_server: OpenAIJSONServer,
    tmp_path: Path,
) -> None:
    """OpenAI billed the completion, then the database went away: the usage lands in
    the spool (the step fails on its next write), and a replay records it exactly once."""
    openai_server.script(ScriptedAnswer(good_answer(), prompt_tokens=420, completion_tokens=48))
    s = workflow_settings(
        settings,
        openai_base_url=openai_server.base_url,
        posthog_api_key="",
        flow_spool_dir=tmp_path,
    )
    thread = await new_thread(sb, api_key)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    down = await create_client(s.model_copy(update={"supabase_url": f"http://127.0.0.1:{closed}"}))
    analytics = PostHogAnalytics.from_settings(s)
    extractor = InsightsExtractor(s, down, analytics)

    with pytest.raises(DatabaseUnavailable):
        await extractor.run(thread, "caller: when are you open?\nbot: nine to five")
    assert len(openai_server.requests) == 1
    assert await ledger(sb, thread["workflow_thread_id"]) == []
    spooled = (tmp_path / SPOOL_FILE).read_text().splitlines()
    assert len(spooled) == 1 and json.loads(spooled[0])["category"] == "insights"

    assert await replay_spool(sb, tmp_path) == 1
    assert await replay_spool(sb, tmp_path) == 0
    rows = await ledger(sb, thread["workflow_thread_id"])
    price = BOOK.llm("openai", s.flow_insights_model, input_tokens=420, output_tokens=48)
    assert price is not None
    assert [(r["category"], r["input_tokens"], r["cost_usd"]) for r in rows] == [
        ("insights", 420, price.total_cost_usd)
    ]
