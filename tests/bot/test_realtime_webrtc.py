"""A realtime call over real WebRTC: recorded speech from a caller (aiortc) through the
real ``POST /api/bot/join`` with ``mode: "realtime"``, the bot's one speech-to-speech
service talking to the local fake of OpenAI's Realtime websocket, whose turn detection
hears the recordings; the bot's voice comes back to the caller."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from supabase import AsyncClient

from flow.bot.webrtc import use_loopback_candidates
from flow.config import Settings
from flow.db import threads as threads_repo
from flow.metering.events import event_id_from
from tests.api.conftest import bearer
from tests.bot.helpers import ledger
from tests.bot.test_webrtc_call import flow_app, webrtc_settings
from tests.bot.webrtc_caller import Caller, recording
from tests.fakes.openai_realtime_server import FakeRealtime
from tests.fakes.openai_server import FakeOpenAI
from tests.workflows.support import GOOD_INSIGHTS, good_answer

TRANSCRIPTS = ["Where is my order?", "Thanks, that is all."]
REPLIES = ["Your order ships tomorrow.", "You are welcome. Goodbye!"]


@pytest.fixture
async def servers() -> AsyncIterator[tuple[FakeRealtime, FakeOpenAI]]:
    realtime = await FakeRealtime(replies=list(REPLIES), transcripts=list(TRANSCRIPTS)).start()
    insights = await FakeOpenAI(json_answer=good_answer()).start()
    yield realtime, insights
    await realtime.stop()
    await insights.stop()


async def test_a_realtime_call_over_webrtc_hears_the_caller_and_bills_what_the_vendor_reported(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    servers: tuple[FakeRealtime, FakeOpenAI],
    tmp_path: Path,
) -> None:
    realtime, insights = servers
    use_loopback_candidates()
    caller = Caller()
    s = webrtc_settings(
        settings, insights.base_url, tmp_path, openai_realtime_base_url=realtime.url
    )
    try:
        async with flow_app(s) as (app, client):
            res = await client.post(
                "/api/bot/join",
                json={
                    "transport": "webrtc",
                    "webrtc_offer": await caller.offer(),
                    "bot_config": {"mode": "realtime", "voice": "coral"},
                },
                headers=bearer(api_key),
            )
            assert res.status_code == 202, res.text
            thread_id = res.json()["workflow_thread_id"]
            await caller.accept(res.json()["webrtc_answer"])
            heard = []
            for name in ("order_status", "thank_you"):
                await caller.say(recording(name))
                heard.append(await caller.hear_reply(quiet=0.5))
            await caller.hang_up()
            await asyncio.wait_for(app.state.runner.wait(thread_id), 30)
    finally:
        await caller.hang_up()

    # The server heard two turns in the recorded speech and answered each.
    assert [t.transcript for t in realtime.transcriptions] == TRANSCRIPTS
    assert [r.status for r in realtime.responses] == ["completed", "completed"]
    assert realtime.sessions[-1]["audio"]["output"]["voice"] == "coral"
    assert all(h > 0 for h in heard)  # the caller heard the model's voice

    row = await threads_repo.get_thread(sb, thread_id)
    assert row is not None and (row["status"], row["error_code"]) == ("completed", None), row
    rows = await ledger(sb, thread_id)
    bot = {r["id"]: r for r in rows if r["category"] == "bot"}
    expected = {
        str(event_id_from("openai-llm", f"{thread_id}/{r.id}")): r for r in realtime.responses
    }
    transcribed = {
        str(event_id_from("openai-stt", f"{thread_id}/{t.item_id}")): t
        for t in realtime.transcriptions
    }
    assert set(bot) == set(expected) | set(transcribed)
    for event_id, response in expected.items():
        assert response.usage is not None
        assert (bot[event_id]["input_tokens"], bot[event_id]["output_audio_tokens"]) == (
            response.usage.input_tokens,
            response.usage.audio_out,
        )
    for event_id, t in transcribed.items():
        assert bot[event_id]["input_tokens"] == t.usage["input_tokens"]
        assert Decimal(bot[event_id]["audio_seconds_text"]) == t.seconds  # the item's audio
    assert all(r["cost_usd"] is not None and not r["estimated"] for r in rows)

    turns = row["transcript"]
    assert [t["content"] for t in turns if t["role"] == "user"] == TRANSCRIPTS
    assert [t["content"] for t in turns if t["role"] == "assistant"] == REPLIES
    assert row["insights"]["summary"] == GOOD_INSIGHTS["summary"]
