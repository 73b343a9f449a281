"""A whole call through the real runner: the Pipecat pipeline (real OpenAILLMService on
the local streaming server, fake voices), the meter's live PostHog listener, then the
post-call workflow with insights through PostHog's wrapped OpenAI client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from supabase import AsyncClient

from flow.analytics.posthog import PostHogAnalytics
from flow.bot.contract import BotConfig, CallRequest
from flow.bot.simulated import SimulatedParams
from flow.config import Settings
from flow.db import threads as threads_repo
from flow.workflows.bot_call import BotCallWorkflow, build_runner
from flow.workflows.extract_insights import InsightsExtractor, build_openai_client
from tests.bot.helpers import CALLER_AUDIO_SECONDS, FakeVoices
from tests.fakes.openai_json_server import OpenAIJSONServer, ScriptedAnswer
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.posthog_sink import PostHogSink
from tests.workflows.support import GOOD_INSIGHTS, MALFORMED, good_answer, ledger

SCRIPT = ["hi", "when are you open?", "bye"]


@pytest.fixture
async def streaming_openai() -> AsyncIterator[FakeOpenAI]:
    server = await FakeOpenAI(replies=["Hello there.", "Nine to five.", "Goodbye!"]).start()
    yield server
    await server.stop()


def money(value: Any) -> Decimal:
    return Decimal(str(value))


async def run_call(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    tmp_path: Path,
    bot_llm: FakeOpenAI,
    insights_llm: OpenAIJSONServer,
    sink: PostHogSink,
    **thread_fields: Any,
) -> tuple[dict[str, Any], PostHogAnalytics]:
    s = settings.model_copy(
        update={
            "openai_api_key": settings.openai_api_key.__class__("sk-test"),
            "openai_base_url": bot_llm.base_url,
            "flow_spool_dir": tmp_path,
            "flow_meter_flush_seconds": 0.2,
            "posthog_api_key": settings.posthog_api_key.__class__("phc_test"),
            "posthog_host": sink.url,
        }
    )
    analytics = PostHogAnalytics.from_settings(s, flush_interval=0.05)
    insights_settings = s.model_copy(update={"openai_base_url": insights_llm.base_url})
    extractor = InsightsExtractor(
        s, sb, analytics, client=build_openai_client(insights_settings, analytics)
    )
    workflow = BotCallWorkflow(s, sb, analytics, insights=extractor)
    runner, _ = build_runner(
        s,
        sb,
        analytics,
        workflow=workflow,
        services_factory=FakeVoices(),
        simulated=SimulatedParams(caller_audio_seconds=CALLER_AUDIO_SECONDS),
    )
    row = await threads_repo.create_thread(
        sb, api_key_id=api_key["id"], transport="simulated", script=SCRIPT, **thread_fields
    )
    request = CallRequest(
        workflow_thread_id=str(row["workflow_thread_id"]),
        api_key_id=str(api_key["id"]),
        transport="simulated",
        bot_config=BotConfig(),
        script=list(SCRIPT),
        end_user_id=thread_fields.get("end_user_id"),
    )
    await runner.submit(request)
    await runner.wait(request.workflow_thread_id)
    await runner.shutdown()
    thread = await threads_repo.get_thread(sb, request.workflow_thread_id)
    assert thread is not None
    return thread, analytics


async def test_voice_call_with_insights_is_one_posthog_trace_costed_like_the_ledger(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    tmp_path: Path,
    streaming_openai: FakeOpenAI,
    openai_server: OpenAIJSONServer,
    posthog_sink: PostHogSink,
) -> None:
    # The insights model first answers badly, then well: two billed completions.
    openai_server.script(ScriptedAnswer(MALFORMED), ScriptedAnswer(good_answer()))
    thread, analytics = await run_call(
        settings, sb, api_key, tmp_path, streaming_openai, openai_server, posthog_sink
    )
    thread_id = str(thread["workflow_thread_id"])
    key_id = str(api_key["id"])

    assert thread["status"] == "completed" and thread["error_stage"] is None
    assert thread["insights"] == GOOD_INSIGHTS
    assert [t["content"] for t in thread["transcript"] if t["role"] == "user"] == SCRIPT

    analytics.flush()
    received = await posthog_sink.wait_for(lambda evs: any(e["event"] == "$ai_trace" for e in evs))
    rows = {r["id"]: r for r in await ledger(sb, thread_id)}
    bot_llm = [r for r in rows.values() if r["kind"] == "llm" and r["category"] == "bot"]
    insights = [r for r in rows.values() if r["category"] == "insights"]
    assert len(bot_llm) == len(streaming_openai.served) == len(SCRIPT)
    assert len(insights) == 2 and len({r["id"] for r in insights}) == 2

    generations = [e for e in received if e["event"] == "$ai_generation"]
    assert len(generations) == len(bot_llm) + len(insights)
    assert {g["properties"]["$ai_trace_id"] for g in generations} == {thread_id}
    assert {g["distinct_id"] for g in received} == {key_id}  # no end user: the key
    for g in generations:
        assert g["properties"]["$groups"] == {"api_key": key_id}
        assert g["properties"].get("$ai_input") is None
        assert g["properties"].get("$ai_output_choices") is None

    bot_generations = {g["uuid"]: g["properties"] for g in generations if g["uuid"] in rows}
    assert set(bot_generations) == {r["id"] for r in bot_llm}
    for event_id, p in bot_generations.items():
        r = rows[event_id]
        assert (
            p["$ai_input_tokens"],
            p["$ai_output_tokens"],
            p["$ai_cache_read_input_tokens"],
        ) == (
            r["input_tokens"],
            r["output_tokens"],
            r["cache_read_tokens"],
        )
        assert money(p["$ai_total_cost_usd"]) == r["cost_usd"]

    wrapped = sorted(
        (g["properties"] for g in generations if g["uuid"] not in rows),
        key=lambda p: p["$ai_output_tokens"],
    )
    assert sorted((p["$ai_input_tokens"], p["$ai_output_tokens"]) for p in wrapped) == sorted(
        (r["input_tokens"], r["output_tokens"]) for r in insights
    )
    assert sorted(money(p["$ai_total_cost_usd"]) for p in wrapped) == sorted(
        r["cost_usd"] for r in insights
    )

    spans = [e for e in received if e["event"] == "$ai_span"]
    voice = [r for r in rows.values() if r["kind"] in ("tts", "stt")]
    assert {s["uuid"] for s in spans} == {r["id"] for r in voice}
    for s in spans:
        assert money(s["properties"]["$ai_total_cost_usd"]) == rows[s["uuid"]]["cost_usd"]

    [trace] = [e for e in received if e["event"] == "$ai_trace"]
    assert trace["properties"]["$ai_trace_id"] == thread_id
    assert money(trace["properties"]["total_cost_usd"]) == sum(r["cost_usd"] for r in rows.values())
    assert trace["properties"]["$ai_latency"] > 0
    analytics.shutdown()


async def test_posthog_down_during_a_real_call_changes_nothing_but_analytics(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    tmp_path: Path,
    streaming_openai: FakeOpenAI,
    openai_server: OpenAIJSONServer,
    posthog_sink: PostHogSink,
) -> None:
    openai_server.script(ScriptedAnswer(good_answer()))
    posthog_sink.down()
    thread, analytics = await run_call(
        settings,
        sb,
        api_key,
        tmp_path,
        streaming_openai,
        openai_server,
        posthog_sink,
        end_user_id="caller-9",
    )
    assert thread["status"] == "completed" and thread["insights"] == GOOD_INSIGHTS
    rows = await ledger(sb, str(thread["workflow_thread_id"]))
    assert len([r for r in rows if r["kind"] == "llm"]) == len(SCRIPT) + 1
    assert money(thread["usage_stats"]["total_cost_usd"]) == sum(r["cost_usd"] for r in rows)
    analytics.shutdown(1.0)


async def test_a_call_that_fails_in_the_bot_still_sends_its_trace(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    tmp_path: Path,
    openai_server: OpenAIJSONServer,
    posthog_sink: PostHogSink,
) -> None:
    """Shutdown mid-reply fails the call in the bot stage; the failure hook still sends
    the call's $ai_trace (and would send its call.failed webhook)."""
    slow = await FakeOpenAI(replies=["One two three four five six."], slow_word_seconds=0.5).start()
    try:
        s = settings.model_copy(
            update={
                "openai_api_key": settings.openai_api_key.__class__("sk-test"),
                "openai_base_url": slow.base_url,
                "flow_spool_dir": tmp_path,
                "posthog_api_key": settings.posthog_api_key.__class__("phc_test"),
                "posthog_host": posthog_sink.url,
            }
        )
        analytics = PostHogAnalytics.from_settings(s, flush_interval=0.05)
        runner, _ = build_runner(
            s,
            sb,
            analytics,
            services_factory=FakeVoices(),
            simulated=SimulatedParams(caller_audio_seconds=CALLER_AUDIO_SECONDS),
        )
        row = await threads_repo.create_thread(
            sb, api_key_id=api_key["id"], transport="simulated", script=SCRIPT
        )
        thread_id = str(row["workflow_thread_id"])
        await runner.submit(
            CallRequest(
                workflow_thread_id=thread_id,
                api_key_id=str(api_key["id"]),
                transport="simulated",
                bot_config=BotConfig(),
                script=list(SCRIPT),
            )
        )

        async def first_request() -> None:
            while not slow.served:  # noqa: ASYNC110 - the fake server has no event to await
                await asyncio.sleep(0.05)

        await asyncio.wait_for(first_request(), timeout=30)
        await runner.shutdown()
        thread = await threads_repo.get_thread(sb, thread_id)
        assert thread is not None
        assert (thread["status"], thread["error_stage"], thread["error_code"]) == (
            "failed",
            "call",
            "shutdown",
        )
        analytics.flush()
        received = await posthog_sink.wait_for(
            lambda evs: any(e["event"] == "$ai_trace" for e in evs)
        )
        [trace] = [e for e in received if e["event"] == "$ai_trace"]
        assert trace["properties"]["$ai_trace_id"] == thread_id
        assert trace["properties"]["$ai_is_error"] is True
        analytics.shutdown(1.0)
    finally:
        await slow.stop()
