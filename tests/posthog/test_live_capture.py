"""Live PostHog LLM analytics with the real posthog SDK pointed at a local capture sink:
a simulated call (bot usage as the meter reports it, then the post-call workflow with
insights) and what PostHog receives."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from supabase import AsyncClient

from flow.analytics.posthog import PostHogAnalytics
from flow.config import Settings
from flow.db import threads as threads_repo
from flow.db.usage import record_usage_events
from flow.metering.events import UsageEvent, event_id_from
from flow.metering.pricing import PriceBook, cost_fields
from flow.workflows.bot_call import BotCallWorkflow
from flow.workflows.extract_insights import InsightsExtractor
from tests.fakes.openai_json_server import OpenAIJSONServer, ScriptedAnswer
from tests.fakes.posthog_sink import PostHogSink
from tests.workflows.support import (
    GOOD_INSIGHTS,
    FakeCallResult,
    bot_usage,
    call_request,
    good_answer,
    ledger,
    new_thread,
    workflow_settings,
)

INSIGHTS_USAGE = {"prompt_tokens": 433, "completion_tokens": 71, "cached_tokens": 256}


def posthog_setup(
    settings: Settings,
    sb: AsyncClient,
    sink_url: str,
    server: OpenAIJSONServer,
    overrides: dict[str, Any] | None = None,
    **client_options: Any,
) -> tuple[PostHogAnalytics, BotCallWorkflow]:
    s = workflow_settings(
        settings,
        openai_base_url=server.base_url,
        posthog_api_key="phc_test_project",
        posthog_host=sink_url,
        **(overrides or {}),
    )
    analytics = PostHogAnalytics.from_settings(s, flush_interval=0.05, **client_options)
    return analytics, BotCallWorkflow(
        s, sb, analytics, insights=InsightsExtractor(s, sb, analytics)
    )


async def simulate_call(
    sb: AsyncClient, analytics: PostHogAnalytics, workflow: BotCallWorkflow, thread: dict[str, Any]
) -> list[UsageEvent]:
    """The bot's usage reaches the listeners as it is created and the ledger in a batch;
    then the runner hands the call to post_call."""
    events = bot_usage(thread)
    for listener in analytics.listeners():
        for event in events:
            listener(event)
    assert await record_usage_events(sb, events) == len(events)
    await workflow.post_call(call_request(thread), FakeCallResult())
    return events


def props(event: dict[str, Any]) -> dict[str, Any]:
    return event["properties"]


def money(value: Any) -> Decimal:
    return Decimal(str(value))


async def test_call_with_insights_reaches_posthog_with_the_ledgers_tokens_and_costs(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    openai_server: OpenAIJSONServer,
    posthog_sink: PostHogSink,
) -> None:
    openai_server.script(ScriptedAnswer(good_answer(), **INSIGHTS_USAGE))
    analytics, workflow = posthog_setup(settings, sb, posthog_sink.url, openai_server)
    thread = await new_thread(sb, api_key)  # no end user: PostHog's person is the key
    thread_id = str(thread["workflow_thread_id"])
    key_id = str(api_key["id"])

    bot_events = await simulate_call(sb, analytics, workflow, thread)
    analytics.flush()
    received = await posthog_sink.wait_for(
        lambda evs: len([e for e in evs if e["event"] == "$ai_trace"]) == 1
    )

    row = await threads_repo.get_thread(sb, thread_id)
    assert row is not None and row["status"] == "completed" and row["insights"] == GOOD_INSIGHTS
    rows = {r["id"]: r for r in await ledger(sb, thread_id)}
    assert len(rows) == 5

    generations = [e for e in received if e["event"] == "$ai_generation"]
    assert len(generations) == 3  # two bot inferences + the insights call
    for g in generations:
        p = props(g)
        assert p["$ai_trace_id"] == thread_id
        assert g["distinct_id"] == key_id
        assert p["$groups"] == {"api_key": key_id}
        assert p.get("$ai_input") is None and p.get("$ai_output_choices") is None
        assert money(p["$ai_input_cost_usd"]) + money(p["$ai_output_cost_usd"]) == money(
            p["$ai_total_cost_usd"]
        )

    by_uuid = {g["uuid"]: g for g in generations}
    for event in (e for e in bot_events if e.kind == "llm"):
        p = props(by_uuid[str(event.id)])
        ledger_row = rows[str(event.id)]
        assert (
            p["$ai_input_tokens"],
            p["$ai_output_tokens"],
            p["$ai_cache_read_input_tokens"],
        ) == (
            ledger_row["input_tokens"],
            ledger_row["output_tokens"],
            ledger_row["cache_read_tokens"],
        )
        assert money(p["$ai_total_cost_usd"]) == ledger_row["cost_usd"]
        assert p["$ai_latency"] == float(event.latency_ms) / 1000  # seconds
        assert (p["$ai_model"], p["$ai_provider"], p["$ai_http_status"], p["$ai_is_error"]) == (
            "gpt-4o-mini",
            "openai",
            200,
            False,
        )
        assert p["$ai_span_name"] == "llm"

    insights_generation = [
        g for g in generations if g["uuid"] not in {str(e.id) for e in bot_events}
    ]
    assert len(insights_generation) == 1
    p = props(insights_generation[0])
    insights_row = next(r for r in rows.values() if r["category"] == "insights")
    assert insights_row["id"] == str(
        event_id_from("openai-response", f"{thread_id}:{openai_server.response_ids[0]}")
    )
    assert (
        (p["$ai_input_tokens"], p["$ai_output_tokens"], p["$ai_cache_read_input_tokens"])
        == (
            433,
            71,
            256,
        )
        == (
            insights_row["input_tokens"],
            insights_row["output_tokens"],
            insights_row["cache_read_tokens"],
        )
    )
    assert money(p["$ai_total_cost_usd"]) == insights_row["cost_usd"]
    assert p["$ai_span_name"] == "extract_insights" and p["$ai_model"] == "gpt-4o-mini"

    spans = [e for e in received if e["event"] == "$ai_span"]
    assert sorted(props(s)["$ai_span_name"] for s in spans) == ["stt", "tts"]
    for span in spans:
        assert props(span)["$ai_trace_id"] == thread_id
        assert money(props(span)["$ai_total_cost_usd"]) == rows[span["uuid"]]["cost_usd"]

    [trace] = [e for e in received if e["event"] == "$ai_trace"]
    t = props(trace)
    assert t["$ai_trace_id"] == thread_id and trace["distinct_id"] == key_id
    assert t["status"] == "completed" and t["$ai_latency"] == pytest.approx(42, abs=1)
    assert money(t["total_cost_usd"]) == sum(r["cost_usd"] for r in rows.values())
    assert t["llm_calls"] == 3
    assert "$ai_input_state" not in t and "$ai_output_state" not in t
    analytics.shutdown()


async def test_content_leaves_flow_only_when_enabled_and_end_user_is_the_person(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    openai_server: OpenAIJSONServer,
    posthog_sink: PostHogSink,
) -> None:
    openai_server.script(ScriptedAnswer(good_answer(), **INSIGHTS_USAGE))
    analytics, workflow = posthog_setup(
        settings,
        sb,
        posthog_sink.url,
        openai_server,
        overrides={"posthog_capture_content": True},
    )
    thread = await new_thread(sb, api_key, end_user_id="user-42")

    await simulate_call(sb, analytics, workflow, thread)
    analytics.flush()
    received = await posthog_sink.wait_for(lambda evs: any(e["event"] == "$ai_trace" for e in evs))

    assert {e["distinct_id"] for e in received} == {"user-42"}
    [insights_gen] = [
        e
        for e in received
        if e["event"] == "$ai_generation" and props(e).get("flow_category") == "insights"
    ]
    sent_input = str(props(insights_gen)["$ai_input"])
    assert "When are you open?" in sent_input
    assert props(insights_gen)["$ai_output_choices"]
    [trace] = [e for e in received if e["event"] == "$ai_trace"]
    assert "When are you open?" in props(trace)["$ai_input_state"]
    assert props(trace)["$ai_output_state"]["summary"] == GOOD_INSIGHTS["summary"]
    analytics.shutdown()


@pytest.mark.parametrize("failure", ["answers_500", "down"])
async def test_posthog_failing_never_blocks_the_call_nor_touches_the_ledger(
    failure: str,
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    openai_server: OpenAIJSONServer,
    posthog_sink: PostHogSink,
) -> None:
    openai_server.script(ScriptedAnswer(good_answer(), **INSIGHTS_USAGE))
    if failure == "answers_500":
        posthog_sink.mode = "error"
    else:
        posthog_sink.down()
    analytics, workflow = posthog_setup(settings, sb, posthog_sink.url, openai_server)
    thread = await new_thread(sb, api_key)
    thread_id = str(thread["workflow_thread_id"])

    # A guard against a hang, not a timing assertion.
    bot_events = await asyncio.wait_for(simulate_call(sb, analytics, workflow, thread), 30)

    row = await threads_repo.get_thread(sb, thread_id)
    assert row is not None and row["status"] == "completed"
    assert row["insights"] == GOOD_INSIGHTS
    rows = await ledger(sb, thread_id)
    assert {r["id"] for r in rows} >= {str(e.id) for e in bot_events}
    assert len(rows) == len(bot_events) + 1
    assert money(row["usage_stats"]["total_cost_usd"]) == sum(r["cost_usd"] for r in rows)
    if failure == "answers_500":
        await asyncio.sleep(0.3)
        assert posthog_sink.requests > 0 and posthog_sink.events() == []
    # Shutdown with PostHog unreachable is bounded too.
    await asyncio.wait_for(asyncio.to_thread(analytics.shutdown, 1.0), 10)
    assert not analytics.enabled


async def test_listener_swallows_capture_errors(settings: Settings, tmp_path: Any) -> None:
    class Exploding:
        tries = 0

        def capture(self, *args: Any, **kwargs: Any) -> None:
            self.tries += 1
            raise RuntimeError("boom")

    from flow.metering.meter import Meter
    from flow.metering.pricing import PriceBook

    client = Exploding()
    analytics = PostHogAnalytics(client, prices=PriceBook())  # type: ignore[arg-type]
    thread = {"workflow_thread_id": event_id_from("t", "1"), "api_key_id": event_id_from("k", "1")}
    events = bot_usage(thread)
    # The meter's listener path: a capture that raises never reaches the meter, and
    # every event is still taken.
    meter = Meter(None, spool_dir=tmp_path, listeners=analytics.listeners())  # type: ignore[arg-type]
    for event in events:
        meter.add(event)
    assert client.tries == len(events)
    assert meter.events == events and meter.pending == len(events)


async def test_a_realtime_inference_reaches_posthog_with_its_audio_parts(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    openai_server: OpenAIJSONServer,
    posthog_sink: PostHogSink,
) -> None:
    """PostHog's LLM analytics reads audio as $ai_audio_input_tokens (cached audio
    included), $ai_audio_output_tokens and $ai_cache_read_audio_tokens."""
    analytics, _ = posthog_setup(settings, sb, posthog_sink.url, openai_server)
    thread = await new_thread(sb, api_key)
    thread_id = str(thread["workflow_thread_id"])
    counts = {
        "input_tokens": 12_480,
        "cache_read_tokens": 8_064,
        "input_audio_tokens": 9_216,
        "cache_read_audio_tokens": 6_400,
        "output_tokens": 1_905,
        "output_audio_tokens": 1_536,
    }
    price = PriceBook().llm("openai", "gpt-realtime", **counts)
    assert price is not None
    event = UsageEvent(
        workflow_thread_id=thread_id,
        api_key_id=api_key["id"],
        kind="llm",
        provider="openai",
        model="gpt-realtime",
        processor="llm",
        **counts,
        **cost_fields(price),
    )
    for listener in analytics.listeners():
        listener(event)
    assert await record_usage_events(sb, [event]) == 1
    row = await threads_repo.get_thread(sb, thread_id)
    assert row is not None
    analytics.capture_trace(
        workflow_thread_id=thread_id,
        api_key_id=api_key["id"],
        end_user_id=None,
        started_at=None,
        ended_at=None,
        usage_stats=row["usage_stats"],
        status="completed",
    )
    analytics.flush()
    received = await posthog_sink.wait_for(
        lambda evs: {e["event"] for e in evs} >= {"$ai_generation", "$ai_trace"}
    )
    [generation] = [e for e in received if e["event"] == "$ai_generation"]
    p = props(generation)
    assert generation["uuid"] == str(event.id)
    assert (p["$ai_input_tokens"], p["$ai_cache_read_input_tokens"]) == (12_480, 8_064)
    assert (
        p["$ai_audio_input_tokens"],
        p["$ai_audio_output_tokens"],
        p["$ai_cache_read_audio_tokens"],
    ) == (9_216, 1_536, 6_400)
    assert money(p["$ai_input_cost_usd"]) == price.input_cost_usd
    assert money(p["$ai_output_cost_usd"]) == price.output_cost_usd
    assert p["flow_price_source"] == price.source == event.price_source
    [trace] = [e for e in received if e["event"] == "$ai_trace"]
    t = props(trace)
    assert (t["input_audio_tokens"], t["output_audio_tokens"], t["cache_read_audio_tokens"]) == (
        9_216,
        1_536,
        6_400,
    )
    analytics.shutdown()


class RecordingClient:
    """Stands in for the SDK client: keeps what would be captured."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.events: list[str] = []

    def capture(self, name: str, **kwargs: Any) -> None:
        self.events.append(name)
        self.sent.append(kwargs["properties"])


def test_a_text_inference_says_it_had_no_audio() -> None:
    client = RecordingClient()
    analytics = PostHogAnalytics(client, prices=PriceBook())  # type: ignore[arg-type]
    thread = {"workflow_thread_id": event_id_from("t", "2"), "api_key_id": event_id_from("k", "2")}
    analytics.capture_usage(bot_usage(thread)[0])
    [p] = client.sent
    assert (
        p["$ai_audio_input_tokens"],
        p["$ai_audio_output_tokens"],
        p["$ai_cache_read_audio_tokens"],
    ) == (0, 0, 0)


def test_a_phone_call_leg_is_a_span_with_its_seconds_and_its_cost() -> None:
    client = RecordingClient()
    analytics = PostHogAnalytics(client, prices=PriceBook())  # type: ignore[arg-type]
    seconds = Decimal("61.250")
    event = UsageEvent(
        workflow_thread_id=event_id_from("t", "3"),
        api_key_id=event_id_from("k", "3"),
        kind="telephony",
        provider="twilio",
        model="inbound",
        processor="telephony",
        audio_seconds=seconds,
        **cost_fields(PriceBook().telephony("twilio", "inbound", seconds)),
    )
    analytics.capture_usage(event)
    [p] = client.sent
    assert client.events == ["$ai_span"]
    assert (p["$ai_span_name"], p["$ai_provider"], p["$ai_model"]) == (
        "telephony",
        "twilio",
        "inbound",
    )
    assert p["telephony_seconds"] == seconds and "stt_audio_seconds" not in p
    assert p["$ai_total_cost_usd"] == Decimal("0.017")  # two started minutes
