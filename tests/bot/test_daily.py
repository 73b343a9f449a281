"""A Daily call follows its caller: greeting when they join, a graceful end (so usage is
flushed) when they leave. Built offline, over a transport of our own that raises the
two room events a Daily transport raises, when the test says so."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from pipecat.frames.frames import EndFrame, Frame, TTSSpeakFrame
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.transports.base_transport import BaseTransport
from supabase import AsyncClient

from flow.bot.contract import BotConfig, CallRequest
from flow.bot.pipeline import build_call
from flow.config import Settings
from flow.metering.meter import Meter
from flow.metering.pricing import PriceBook
from tests.bot.helpers import FakeVoices, bot_settings


class RoomTransport(BaseTransport):
    """Raises ``on_first_participant_joined`` and ``on_participant_left`` on demand,
    running the handlers inline."""

    def __init__(self) -> None:
        super().__init__(name="room")
        self._register_event_handler("on_first_participant_joined", sync=True)
        self._register_event_handler("on_participant_left", sync=True)
        self._in, self._out = FrameProcessor(name="room-in"), FrameProcessor(name="room-out")

    def input(self) -> FrameProcessor:
        return self._in

    def output(self) -> FrameProcessor:
        return self._out

    async def raise_event(self, name: str, *args: Any) -> None:
        await self._call_event_handler(name, *args)


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
        transport=RoomTransport(),
    )
    room = bot.transport
    assert isinstance(room, RoomTransport)
    queued: list[Frame] = []

    async def record(frame: Frame) -> None:
        queued.append(frame)

    bot.worker.queue_frame = record  # type: ignore[method-assign]
    await bot.greet()
    assert queued == [], "nobody is in the room yet"
    participant: dict[str, Any] = {"id": "caller", "info": {"userName": "caller"}}
    await room.raise_event("on_first_participant_joined", participant)
    assert [type(f) for f in queued] == [TTSSpeakFrame]
    assert isinstance(queued[0], TTSSpeakFrame) and queued[0].text == "Hi, this is Flow."
    await room.raise_event("on_participant_left", participant, "leftCall")
    assert [type(f) for f in queued] == [TTSSpeakFrame, EndFrame]


async def test_an_empty_greeting_silences_the_default_one(
    settings: Settings, sb: AsyncClient, tmp_path: Path
) -> None:
    s = bot_settings(settings, "http://127.0.0.1:9/v1", tmp_path).model_copy(
        update={"flow_greeting": "Hello from the defaults."}
    )

    def built(greeting: str | None) -> str | None:
        request = CallRequest(
            workflow_thread_id=str(uuid.uuid4()),
            api_key_id=str(uuid.uuid4()),
            transport="simulated",
            bot_config=BotConfig(greeting=greeting),
            script=["hi"],
        )
        bot = build_call(
            request,
            s,
            services=FakeVoices()(s, request),
            meter=Meter(sb, spool_dir=tmp_path),
            price_book=PriceBook(),
        )
        return bot.greeting

    assert built(None) == "Hello from the defaults."
    assert built("Welcome!") == "Welcome!"
    assert built("") is None
