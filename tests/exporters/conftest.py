"""Export tests: the real stack, local PostHog and Mixpanel sinks, and ledger seeding."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import SecretStr
from supabase import AsyncClient

from flow.config import Settings
from flow.db.client import call
from flow.db.usage import record_usage_events
from flow.exporters.sync import Exporter
from flow.metering.events import UsageEvent, UsageKind
from tests.fakes.analytics_sinks import MixpanelSink, PostHogSink

PH_KEY = "phc_testprojectkey0123456789abcdef"
MP_TOKEN = "0123456789abcdef0123456789abcdef"
MP_SECRET = "mpsecret0123456789abcdef01234567"
FLOW_SECRET = "export-tests-secret-key-that-is-long-enough"


@pytest.fixture
def export_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "flow_secret_key": SecretStr(FLOW_SECRET),
            "unkey_root_key": SecretStr(""),
            "flow_sync_tick_seconds": 0.2,
            # The sinks listen on 127.0.0.1.
            "flow_allow_private_urls": True,
        }
    )


@pytest.fixture
async def posthog_sink() -> AsyncIterator[PostHogSink]:
    sink = PostHogSink({PH_KEY})
    await sink.start()
    yield sink
    await sink.stop()


@pytest.fixture
async def mixpanel_sink() -> AsyncIterator[MixpanelSink]:
    sink = MixpanelSink({MP_TOKEN}, api_secrets={MP_SECRET})
    await sink.start()
    yield sink
    await sink.stop()


@pytest.fixture
async def cleanup_integrations(sb: AsyncClient, api_key: dict[str, Any]) -> AsyncIterator[None]:
    """Deletes the key's integrations after the test, so no later cycle picks them up."""
    yield
    await call(sb.table("analytics_integrations").delete().eq("api_key_id", api_key["id"]).execute)


def make_events(
    thread: dict[str, Any], n: int, *, occurred_at: datetime | None = None
) -> list[UsageEvent]:
    base = occurred_at or datetime.now(UTC) - timedelta(hours=1)
    return [
        UsageEvent(
            workflow_thread_id=thread["workflow_thread_id"],
            api_key_id=thread["api_key_id"],
            end_user_id=f"user-{i % 7}",
            occurred_at=base + timedelta(milliseconds=i),
            kind=UsageKind.LLM,
            provider="openai",
            model="gpt-4o-mini",
            input_tokens=100 + i,
            output_tokens=20,
            cost_usd=Decimal("0.0000123457") * (i + 1),
            latency_ms=Decimal("312.5"),
            status_code=200,
        )
        for i in range(n)
    ]


async def seed(
    sb: AsyncClient, thread: dict[str, Any], n: int, *, occurred_at: datetime | None = None
) -> list[UsageEvent]:
    events = make_events(thread, n, occurred_at=occurred_at)
    for start in range(0, n, 2000):
        await record_usage_events(sb, events[start : start + 2000])
    return events


def exporter(sb: AsyncClient, settings: Settings, **kwargs: Any) -> Exporter:
    kwargs.setdefault("backoff_base_seconds", 0.01)
    kwargs.setdefault("backoff_max_seconds", 0.05)
    kwargs.setdefault("owner", f"test-{uuid.uuid4().hex[:8]}")
    return Exporter(sb, settings, **kwargs)


async def integration_row(sb: AsyncClient, iid: str) -> dict[str, Any]:
    res = await call(sb.table("analytics_integrations").select("*").eq("id", iid).execute)
    return dict(res.data[0])


async def wait_until(condition: Any, timeout_seconds: float = 30.0) -> None:
    """Polls ``condition()`` until true; fails the test after ``timeout_seconds``."""
    for _ in range(int(timeout_seconds / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached in time")


def make_realtime_events(thread: dict[str, Any], n: int) -> list[UsageEvent]:
    """Speech-to-speech inferences: audio inside every total (cached audio inside both
    the cache reads and the audio input)."""
    base = datetime.now(UTC) - timedelta(minutes=30)
    return [
        UsageEvent(
            workflow_thread_id=thread["workflow_thread_id"],
            api_key_id=thread["api_key_id"],
            occurred_at=base + timedelta(milliseconds=i),
            kind=UsageKind.LLM,
            provider="openai",
            model="gpt-realtime",
            input_tokens=2_000 + i,
            cache_read_tokens=900,
            input_audio_tokens=1_500 + i,
            cache_read_audio_tokens=700,
            output_tokens=400,
            output_audio_tokens=350 - i,
            cost_usd=Decimal("0.0312") + i,
        )
        for i in range(n)
    ]
