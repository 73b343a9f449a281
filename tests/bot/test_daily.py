"""A Daily call follows its caller: greeting when they join, a graceful end (so usage is
flushed) when they leave. Built offline: the Daily transport needs no network until the
pipeline runs, and its events are raised the way the transport raises them."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from pipecat.frames.frames import EndFrame, Frame, TTSSpeakFrame
from supabase import AsyncClient

from flow.bot.contract import BotConfig, CallRequest
from flow.bot.pipeline import build_call
from flow.config import Settings
from flow.metering.meter import Meter
from flow.metering.pricing import PriceBook
from tests.bot.helpers import FakeVoices, bot_settings


async def test_daily_call_greets_on_join_and_ends_when_the_caller_leaves(
    settings: Settings, sb: AsyncClient, tmp_path: Path
) -> None:
    s = bot_settings(settings, "http://127.0.0.1:9/v1", tmp_path)
    request = CallRequest(
        workflow_thread_id=str(uuid.uuid4()),
        api_key_id=str(uuid.uuid4()),
        transport="daily",
        bot_config=BotConfig(greeting="Hi, this is Flow."),
        room_url="https://example.daily.co/flow-test",
    )
    bot = build_call(
        request,
        s,
        services=FakeVoices()(s, request),
        meter=Meter(sb, spool_dir=tmp_path),
        price_book=PriceBook(),
    )
    queued: list[Frame] = []

    async def record(frame: Frame) -> None:
        queued.append(frame)

    bot.worker.queue_frame = record  # type: ignore[method-assign]
    await bot.greet()
    assert queued == [], "nobody is in the room yet"
    participant: dict[str, Any] = {"id": "caller", "info": {"userName": "caller"}}

    async def raise_event(name: str, *args: Any) -> None:
        # The transport runs handlers as tasks of its own: wait for them as it would.
        await bot.transport._call_event_handler(name, *args)
        await asyncio.gather(*(task for _, task in list(bot.transport._event_tasks)))

    await raise_event("on_first_participant_joined", participant)
    assert [type(f) for f in queued] == [TTSSpeakFrame]
    assert isinstance(queued[0], TTSSpeakFrame) and queued[0].text == "Hi, this is Flow."
    await raise_event("on_participant_left", participant, "leftCall")
    assert [type(f) for f in queued] == [TTSSpeakFrame, EndFrame]
