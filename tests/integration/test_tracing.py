"""OpenTelemetry traces of a call: ``flow serve`` with ``OTEL_EXPORTER_OTLP_ENDPOINT``
set sends each call's trace (Pipecat's conversation, turn and service spans, and a
``flow.usage`` span per usage event carrying the ledger's event id) to a local OTLP
collector; the collector's credentials never reach the log."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from supabase import AsyncClient

from flow import localstack
from flow.bot.tracing import attributes, parse_headers, traces_url
from flow.db import threads as threads_repo
from flow.metering.events import UsageCategory, UsageEvent, UsageKind
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.otlp_collector import FakeCollector
from tests.faults.test_call_faults import call_ledger, serve_env
from tests.integration.test_drain import REPLIES, join, until
from tests.served import ServedFlow

SECRET = "collector-secret-4f1d"


@pytest.mark.timeout(120)
async def test_a_traced_call_sends_its_spans_with_the_ledgers_event_ids(
    stack: localstack.StackInfo, sb: AsyncClient, api_key: dict[str, Any], tmp_path: Path
) -> None:
    collector = await FakeCollector().start()
    vendor = await FakeOpenAI(replies=REPLIES).start()
    env = {
        **serve_env(vendor, tmp_path / "spool"),
        "FLOW_METER_FLUSH_SECONDS": "1",
        "FLOW_LOG_LEVEL": "INFO",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_SERVICE_NAME": "flow-under-test",
        "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer%20{SECRET}",
    }
    flow = ServedFlow(stack, tmp_path / "flow.log", **env)
    try:
        await asyncio.to_thread(flow.start)
        tid = await join(flow.url, api_key)

        async def completed() -> bool:
            row = await threads_repo.get_thread(sb, tid)
            return row is not None and row["status"] == "completed"

        await until(completed, "the call completed", seconds=60)
        assert await asyncio.to_thread(flow.terminate, 60) == 0  # flushes the spans
    finally:
        flow.kill()
        await collector.stop()
        await vendor.stop()

    ledger = await call_ledger(sb, tid)
    assert {r["kind"] for r in ledger} == {"llm", "tts"}
    [conversation] = [
        s
        for s in collector.spans
        if s.name == "conversation" and s.attributes.get("conversation.id") == tid
    ]
    assert conversation.service == "flow-under-test"
    assert conversation.attributes["flow.api_key_id"] == str(api_key["id"])
    trace = [s for s in collector.spans if s.trace_id == conversation.trace_id]
    usage = [s for s in trace if s.name == "flow.usage"]
    # One span per ledger row, named by the row's id, in the call's trace.
    assert sorted(s.attributes["flow.usage_event_id"] for s in usage) == sorted(
        str(r["id"]) for r in ledger
    )
    by_id = {str(r["id"]): r for r in ledger}
    for span in usage:
        row = by_id[span.attributes["flow.usage_event_id"]]
        assert span.attributes["flow.usage.kind"] == row["kind"]
        assert span.attributes.get("flow.usage.characters", 0) == row["characters"]
        assert span.attributes.get("flow.usage.input_tokens", 0) == row["input_tokens"]
    span_ids = {s.span_id for s in trace}
    assert all(s.parent_span_id in span_ids for s in usage)
    names = {s.name for s in trace}
    assert {"turn", "llm", "tts"} <= names, names
    # The exporter sent the collector's credentials; Flow never wrote them down.
    assert any(h.get("authorization") == f"Bearer {SECRET}" for h in collector.headers), (
        collector.headers
    )
    assert SECRET not in flow.log()
    assert "tracing calls to " + traces_url(collector.url) in flow.log()


def test_collector_headers_are_read_as_the_otlp_spec_writes_them() -> None:
    assert parse_headers("") is None
    assert parse_headers("Authorization=Bearer%20abc, x-team=voice") == {
        "authorization": "Bearer abc",
        "x-team": "voice",
    }


def test_an_endpoint_gets_its_traces_path_once() -> None:
    assert traces_url("http://otel:4318") == "http://otel:4318/v1/traces"
    assert traces_url("http://otel:4318/") == "http://otel:4318/v1/traces"
    assert traces_url("https://x.example/v1/traces") == "https://x.example/v1/traces"


def test_a_usage_event_as_span_attributes_keeps_the_ledgers_digits() -> None:
    event = UsageEvent(
        workflow_thread_id="00000000-0000-0000-0000-000000000001",
        api_key_id="00000000-0000-0000-0000-000000000002",
        kind=UsageKind.STT,
        category=UsageCategory.BOT,
        provider="deepgram",
        model="nova-3",
        audio_seconds="4.250",
        cost_usd="0.0005454167",
    )
    got = attributes(event)
    assert got["flow.usage_event_id"] == str(event.id)
    assert got["flow.usage.audio_seconds"] == "4.250"
    assert got["flow.usage.cost_usd"] == "0.0005454167"
    assert "flow.usage.input_tokens" not in got  # zero counts are left out
