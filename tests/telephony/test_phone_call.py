"""A phone call end to end, offline: Twilio (emulated in Python) calls one of Flow's
numbers with a signed Voice webhook, then streams recorded speech as 8 kHz mu-law over
the Media Stream websocket of the real app, whose real runner answers with Silero VAD,
Pipecat's OpenAI STT, LLM and TTS services (against the local fake OpenAI) and
Pipecat's Twilio serializer. The ledger holds exactly what the vendors received and
served, and the call leg, priced per started minute."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
from supabase import AsyncClient

from flow.config import Settings
from flow.db import numbers as numbers_db
from flow.db import telephony as telephony_repo
from flow.db import threads as threads_repo
from flow.metering.events import event_id_from
from tests.bot.helpers import ledger
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.recording_sink import RecordingSink
from tests.fakes.twilio_server import FakeTwilio
from tests.telephony.support import new_number, phone_settings, served_flow
from tests.telephony.twilio_phone import MediaStream, Twilio, stream_of
from tests.workflows.support import GOOD_INSIGHTS, good_answer

GREETING = (
    "Hello, thank you for calling Flow. I can help you with your orders, your returns "
    "and your deliveries. What can I do for you today?"
)
TRANSCRIPTS = ["Where is my order?", "Thanks, that is all."]
REPLIES = ["Your order ships tomorrow.", "You are welcome. Goodbye!"]
CALLER = "+15557654321"
MS = Decimal("0.001")


@pytest.fixture
async def openai_server() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI(
        replies=list(REPLIES),
        transcripts=list(TRANSCRIPTS),
        speech_tone_hz=400,
        json_answer=good_answer(),
    )
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    fake = await FakeTwilio().start()
    yield fake
    await fake.stop()


async def test_a_phone_call_meters_its_leg_and_exactly_what_the_vendors_received_and_served(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    openai_server: FakeOpenAI,
    twilio: FakeTwilio,
    tmp_path: Path,
) -> None:
    webhooks = await RecordingSink().start()
    number = new_number()
    config = {"greeting": GREETING, "webhook_url": f"{webhooks.url}/calls"}
    await numbers_db.add_number(sb, number, api_key["id"], config)
    s = phone_settings(settings, openai_server.base_url, twilio, tmp_path)
    async with served_flow(s) as (app, url):
        twilio_side = Twilio(url, twilio.auth_token, twilio.account_sid)
        call_sid, res = await twilio_side.incoming_call(number, CALLER)
        assert res.status_code == 200, res.text
        assert res.headers["content-type"].startswith("application/xml")
        stream_url, parameters = stream_of(res.text)
        assert stream_url == f"ws://{url.split('://')[1]}/api/telephony/twilio/stream"
        assert set(parameters) == {"token"}
        leg = await telephony_repo.find_by_call_sid(sb, call_sid)
        assert leg is not None and leg["direction"] == "inbound"
        thread_id = leg["workflow_thread_id"]

        phone = MediaStream(stream_url, call_sid, twilio.account_sid)
        await phone.start(parameters)
        await phone.hear_speech()  # the greeting...
        await phone.say("order_status")  # ...which the caller talks over
        first = await phone.hear_reply()
        await phone.say("thank_you")
        second = await phone.hear_reply()
        await phone.stop()  # the caller hangs up
        await asyncio.wait_for(app.state.runner.wait(thread_id), 30)
        for _ in range(100):  # the webhook goes out in the background: at most 10 s
            if webhooks.requests:
                break
            await asyncio.sleep(0.1)
    await webhooks.stop()
    assert phone.started_at is not None and phone.stopped_at is not None

    row = await threads_repo.get_thread(sb, thread_id)
    assert row is not None
    assert (row["status"], row["error_code"], row["transport"]) == ("completed", None, "twilio")
    assert row["end_user_id"] == CALLER and row["bot_config"]["greeting"] == GREETING
    rows = await ledger(sb, thread_id)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_kind.setdefault(r["kind"] if r["category"] == "bot" else "insights", []).append(r)

    # STT: one event per WAV the vendor received, of exactly its duration.
    uploads = openai_server.uploads
    assert len(uploads) == len(TRANSCRIPTS), [u.seconds for u in uploads]
    received = sorted(u.seconds.quantize(MS, ROUND_HALF_UP) for u in uploads)
    assert sorted(Decimal(r["audio_seconds_text"]) for r in by_kind["stt"]) == received
    assert Decimal(str(row["usage_stats"]["stt_seconds"])) == sum(received)

    # LLM tokens and TTS characters (the interrupted greeting's too): exactly as served.
    served = [x for x in openai_server.served if x.stream]
    assert len(served) == len(REPLIES) and all(x.usage_sent for x in served)
    assert sorted((r["input_tokens"], r["output_tokens"]) for r in by_kind["llm"]) == sorted(
        (x.usage.prompt_tokens, x.usage.completion_tokens) for x in served
    )
    spoken = [x.text for x in openai_server.speech]
    assert sorted(r["characters"] for r in by_kind["tts"]) == sorted(len(t) for t in spoken)
    assert row["usage_stats"]["tts_characters"] == sum(len(t) for t in spoken)
    assert GREETING in " ".join(spoken)

    # The leg: one event, exactly the stream's duration, billed per started minute.
    [call_leg] = by_kind["telephony"]
    leg = await telephony_repo.get_call(sb, thread_id)
    assert leg is not None and leg["stream_sid"] == phone.stream_sid
    started = datetime.fromisoformat(leg["stream_started_at"])
    ended = datetime.fromisoformat(leg["stream_ended_at"])
    duration = Decimal(str((ended - started).total_seconds())).quantize(MS, ROUND_HALF_UP)
    seconds = Decimal(call_leg["audio_seconds_text"])
    assert seconds == duration
    assert abs(float(seconds) - (phone.stopped_at - phone.started_at)) < 0.5
    assert (call_leg["provider"], call_leg["model"]) == ("twilio", "inbound")
    assert call_leg["id"] == str(event_id_from("twilio-call-leg", call_sid))
    minutes = math.ceil(seconds / 60)
    assert Decimal(str(call_leg["cost_usd"])) == minutes * Decimal("0.0085")
    assert Decimal(str(row["usage_stats"]["telephony_seconds"])) == seconds
    total = sum(Decimal(str(r["cost_usd"])) for r in rows)
    assert Decimal(str(row["usage_stats"]["total_cost_usd"])) == total
    assert all(r["end_user_id"] == CALLER and r["cost_usd"] is not None for r in rows)
    assert not any(r["estimated"] for r in rows)

    # The caller cut the greeting off: Twilio was told to drop its queued audio.
    assert phone.clears and phone.voiced_before_clear[0] > 0
    turns = row["transcript"]
    assert turns[0]["role"] == "assistant" and turns[0]["interrupted"], turns[0]
    assert [t["content"] for t in turns if t["role"] == "user"] == TRANSCRIPTS
    assert [t["content"] for t in turns if t["role"] == "assistant"][1:] == REPLIES

    # The bot's speech came back as mu-law; processed as usual.
    assert first > 0.5 and second > 0.5
    assert twilio.unauthorized == 0
    assert row["insights"]["summary"] == GOOD_INSIGHTS["summary"]
    assert len(by_kind["insights"]) == 1
    [delivery] = webhooks.requests
    body = json.loads(delivery["body"])
    assert body["type"] == "call.completed"
    assert Decimal(str(body["data"]["usage"]["telephony_seconds"])) == seconds
    print(
        f"\nphone call: {phone.stopped_at - phone.started_at:.1f} s, leg {seconds} s "
        f"({minutes} min), uploads {[str(u.seconds) for u in uploads]} s, heard "
        f"{phone.voiced_seconds:.2f} s, clears {len(phone.clears)}"
    )
