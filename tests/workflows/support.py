"""Shared pieces for the post-call and PostHog tests: settings pointed at the local
fakes, a simulated call's bot usage (priced as the meter prices it), ledger reads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import SecretStr
from supabase import AsyncClient

from flow.bot.contract import BotConfig, CallRequest
from flow.config import Settings
from flow.db import call_state
from flow.db import threads as threads_repo
from flow.db.call_state import CallStatus
from flow.db.client import call, rows_of
from flow.metering.events import UsageEvent, UsageKind
from flow.metering.pricing import PriceBook, cost_fields
from tests.fakes.openai_json_server import OpenAIJSONServer, ScriptedAnswer
from tests.fakes.posthog_sink import PostHogSink

BOOK = PriceBook()

GOOD_INSIGHTS = {
    "summary": "The caller asked about opening hours and booked a visit.",
    "key_points": ["Open 9 to 5 on weekdays", "Visit booked for Friday"],
    "sentiment": "positive",
    "action_items": ["Send a confirmation email"],
}
MALFORMED = '{"summary": "cut off", "key_points": ['

TURNS = [
    {"role": "assistant", "content": "Hello, how can I help?"},
    {"role": "user", "content": "When are you open?"},
    {"role": "assistant", "content": "Nine to five on weekdays.", "interrupted": True},
    {"role": "user", "content": "Book me in for Friday please."},
]


def good_answer(**extra: Any) -> str:
    return json.dumps({**GOOD_INSIGHTS, **extra})


def workflow_settings(base: Settings, **update: Any) -> Settings:
    """The session settings with the given fields replaced (secrets as SecretStr)."""
    secret_fields = {"posthog_api_key", "openai_api_key", "flow_webhook_secret", "unkey_root_key"}
    values = {k: SecretStr(v) if k in secret_fields else v for k, v in update.items()}
    values.setdefault("openai_api_key", SecretStr("sk-test-local"))
    return base.model_copy(update=values)


@dataclass
class FakeCallResult:
    """Shaped like the runner's CallResult (what post_call reads)."""

    transcript: Any = field(default_factory=lambda: list(TURNS))
    started_at: datetime | None = field(
        default_factory=lambda: datetime.now(UTC) - timedelta(seconds=42)
    )
    ended_at: datetime | None = field(default_factory=lambda: datetime.now(UTC))
    end_reason: str | None = "caller_hung_up"


def call_request(thread: dict[str, Any], **kw: Any) -> CallRequest:
    return CallRequest(
        workflow_thread_id=str(thread["workflow_thread_id"]),
        api_key_id=str(thread["api_key_id"]),
        transport="simulated",
        bot_config=BotConfig(),
        end_user_id=thread.get("end_user_id"),
        process_insights=thread.get("process_insights", True),
        analysis_prompt=thread.get("analysis_prompt"),
        webhook_url=thread.get("webhook_url"),
        **kw,
    )


def bot_usage(thread: dict[str, Any]) -> list[UsageEvent]:
    """Two LLM inferences (one with cached prompt tokens), one TTS, one STT increment."""
    common = {
        "workflow_thread_id": thread["workflow_thread_id"],
        "api_key_id": thread["api_key_id"],
        "end_user_id": thread.get("end_user_id"),
    }
    events = []
    for input_tokens, output_tokens, cached, latency_ms in (
        (812, 37, 0, Decimal("412.5")),
        (1544, 61, 1024, Decimal("388.0")),
    ):
        price = BOOK.llm(
            "openai",
            "gpt-4o-mini",
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cached,
        )
        assert price is not None
        events.append(
            UsageEvent(
                **common,
                kind=UsageKind.LLM,
                provider="openai",
                model="gpt-4o-mini",
                processor="llm",
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cache_read_tokens=cached,
                **cost_fields(price),
                latency_ms=latency_ms,
                status_code=200,
            )
        )
    events.append(
        UsageEvent(
            **common,
            kind=UsageKind.TTS,
            provider="openai",
            model="tts-1",
            processor="tts",
            characters=63,
            **cost_fields(BOOK.tts("openai", "tts-1", 63)),
        )
    )
    events.append(
        UsageEvent(
            **common,
            kind=UsageKind.STT,
            provider="deepgram",
            model="nova-3",
            processor="stt",
            audio_seconds=Decimal("7.250"),
            **cost_fields(BOOK.stt("deepgram", "nova-3", Decimal("7.250"))),
        )
    )
    return events


async def ledger(sb: AsyncClient, thread_id: str) -> list[dict[str, Any]]:
    """The thread's ledger rows, money exact (numeric read as text)."""
    res = await call(
        lambda: (
            sb.table("usage_events")
            .select(
                "id,kind,category,model,input_tokens,output_tokens,cache_read_tokens,"
                "cost_text:cost_usd::text"
            )
            .eq("workflow_thread_id", thread_id)
            .order("seq")
            .execute()
        )
    )
    rows = rows_of(res)
    for row in rows:
        text = row.pop("cost_text")
        row["cost_usd"] = None if text is None else Decimal(text)
    return rows


async def new_thread(sb: AsyncClient, api_key: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A thread as the runner leaves it before post_call: ``processing``."""
    row = await threads_repo.create_thread(
        sb, api_key_id=api_key["id"], transport="simulated", script=["hello"], **fields
    )
    for status in (CallStatus.STARTING, CallStatus.PROCESSING):
        assert await call_state.move(sb, row["workflow_thread_id"], status)
    found = await threads_repo.get_thread(sb, row["workflow_thread_id"])
    assert found is not None
    return found


# --- fixtures (imported by the conftest of tests/workflows and tests/posthog) ---------


@pytest.fixture(scope="session")
def openai_server() -> Iterator[OpenAIJSONServer]:
    server = OpenAIJSONServer([ScriptedAnswer(good_answer())]).start()
    yield server
    server.stop()


@pytest.fixture
def posthog_sink() -> Iterator[PostHogSink]:
    sink = PostHogSink().start()
    yield sink
    sink.stop()
