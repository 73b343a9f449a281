"""Real voice end to end over WebRTC, offline: a caller (aiortc, in this process) joins
through the real ``POST /api/bot/join`` of the real app, whose runner is the real
``BotRunner`` with the services settings give it: Silero VAD, Pipecat's
``OpenAISTTService``, ``OpenAILLMService`` and ``OpenAITTSService``, all talking to the
local fake OpenAI server. Recorded speech goes in, the bot's speech comes back, and the
ledger holds exactly what the fake vendor received and served."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from supabase import AsyncClient

from flow import metrics
from flow.bot.webrtc import use_loopback_candidates
from flow.config import Settings
from flow.db import threads as threads_repo
from flow.main import create_app
from tests.api.conftest import bearer, local_mode
from tests.bot.helpers import ledger
from tests.bot.webrtc_caller import Caller, recording
from tests.fakes.openai_server import PCM_BYTES_PER_CHARACTER, PCM_CHUNK_BYTES, PCM_RATE, FakeOpenAI
from tests.fakes.recording_sink import RecordingSink
from tests.workflows.support import GOOD_INSIGHTS, good_answer

TRANSCRIPTS = ["Where is my order?", "Thanks, that is all."]
# The seconds of speech in each recording the caller plays (tests/recordings/make.sh).
SPOKEN = {"order_status": Decimal("3.300"), "thank_you": Decimal("2.669")}
REPLIES = ["Your order ships tomorrow.", "You are welcome. Goodbye!"]
MS = Decimal("0.001")


def webrtc_settings(settings: Settings, base_url: str, spool_dir: Path, **kw: Any) -> Settings:
    """The app's settings for real audio: deterministic VAD and turn ends, loopback."""
    return local_mode(settings).model_copy(
        update={
            "openai_api_key": SecretStr("sk-webrtc-tests"),
            "openai_base_url": base_url,
            "deepgram_api_key": SecretStr(""),
            "flow_tts_provider": "openai",
            "flow_greeting": "",
            "flow_spool_dir": spool_dir,
            "flow_meter_flush_seconds": 0.2,
            "flow_vad_stop_secs": 0.5,
            "flow_turn_stop": "timeout",
            "flow_webrtc_loopback": True,
            "flow_sync_enabled": False,
            "flow_allow_private_urls": True,  # the webhook sink is on loopback
            "posthog_api_key": SecretStr(""),
            **kw,
        }
    )


@asynccontextmanager
async def flow_app(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The real app (its lifespan builds the real runner), reached over ASGI."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://flow.test") as client:
            yield app, client


@pytest.fixture
async def openai_server() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI(
        replies=list(REPLIES),
        transcripts=list(TRANSCRIPTS),
        speech_tone_hz=400,
        json_answer=good_answer(),  # the post-call insights
    )
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def caller() -> AsyncIterator[Caller]:
    use_loopback_candidates()  # this side too: the machine may have no other interface
    c = Caller()
    yield c
    await c.hang_up()


async def _settled(app: FastAPI, thread_id: str, wait_seconds: float = 30.0) -> None:
    await asyncio.wait_for(app.state.runner.wait(thread_id), wait_seconds)


def served_speech_seconds(server: FakeOpenAI) -> float:
    audio = sum(max(PCM_CHUNK_BYTES, len(s.text) * PCM_BYTES_PER_CHARACTER) for s in server.speech)
    return audio / (PCM_RATE * 2)


async def test_a_webrtc_call_meters_exactly_what_the_vendors_received_and_served(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    openai_server: FakeOpenAI,
    caller: Caller,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    timed = metrics.REGISTRY.get_sample_value("flow_voice_to_voice_seconds_count") or 0
    s = webrtc_settings(settings, openai_server.base_url, tmp_path)
    webhooks = await RecordingSink().start()
    async with flow_app(s) as (app, client):
        res = await client.post(
            "/api/bot/join",
            json={
                "transport": "webrtc",
                "webrtc_offer": await caller.offer(),
                "end_user_id": "webrtc-caller",
                "webhook_url": f"{webhooks.url}/calls",
            },
            headers=bearer(api_key),
        )
        assert res.status_code == 202, res.text
        thread_id = res.json()["workflow_thread_id"]
        answer = res.json()["webrtc_answer"]
        assert answer["type"] == "answer" and "a=candidate:" in answer["sdp"]
        await caller.accept(answer)

        await caller.say(recording("order_status"))
        first = await caller.hear_reply()
        await caller.say(recording("thank_you"))
        second = await caller.hear_reply()
        await caller.hang_up()  # the caller hangs up: the call ends gracefully
        await _settled(app, thread_id)
        for _ in range(100):  # the webhook goes out in the background: at most 10 s
            if webhooks.requests:
                break
            await asyncio.sleep(0.1)
    await webhooks.stop()
    elapsed = time.monotonic() - started

    row = await threads_repo.get_thread(sb, thread_id)
    assert row is not None
    assert (row["status"], row["error_code"]) == ("completed", None), row
    rows = await ledger(sb, thread_id)
    stt = [r for r in rows if r["kind"] == "stt"]
    llm = [r for r in rows if r["kind"] == "llm" and r["category"] == "bot"]
    tts = [r for r in rows if r["kind"] == "tts"]

    # STT: one metered event per WAV the vendor received, of exactly its duration (the
    # ledger keeps milliseconds); one segment per sentence spoken.
    uploads = openai_server.uploads
    assert len(uploads) == len(TRANSCRIPTS), [u.seconds for u in uploads]
    assert all((u.sample_rate, u.channels, u.sample_width) == (16000, 1, 2) for u in uploads)
    assert all(u.model == "gpt-4o-transcribe" and u.language == "en" for u in uploads)
    received = [u.seconds.quantize(MS, ROUND_HALF_UP) for u in uploads]
    metered = [Decimal(r["audio_seconds_text"]) for r in stt]
    assert sorted(metered) == sorted(received)
    assert sum(metered) == sum(received)
    assert Decimal(str(row["usage_stats"]["stt_seconds"])) == sum(received)
    assert all(r["provider"] == "openai" and r["model"] == "gpt-4o-transcribe" for r in stt)
    # gpt-4o-transcribe is sold by the token: each answer's tokens are on its event.
    assert sorted(
        (r["input_tokens"], r["input_audio_tokens"], r["output_tokens"]) for r in stt
    ) == (
        sorted(
            (
                u.usage["input_tokens"],
                u.usage["input_token_details"]["audio_tokens"],
                u.usage["output_tokens"],
            )
            for u in uploads
            if u.usage is not None
        )
    )
    # What the vendor bills exceeds the speech: the lead-in the STT buffer keeps, the
    # silence that ends the segment, the padding appended to it.
    assert all(u.seconds > spoken for u, spoken in zip(uploads, SPOKEN.values(), strict=True))

    # LLM tokens and TTS characters: exactly what the fake served.
    served = [x for x in openai_server.served if x.stream]
    assert len(served) == len(REPLIES) and all(x.usage_sent for x in served)
    assert sorted((r["input_tokens"], r["output_tokens"]) for r in llm) == sorted(
        (x.usage.prompt_tokens, x.usage.completion_tokens) for x in served
    )
    assert sorted(r["characters"] for r in tts) == sorted(len(x.text) for x in openai_server.speech)
    assert row["usage_stats"]["tts_characters"] == sum(len(x.text) for x in openai_server.speech)
    assert not any(r["estimated"] for r in rows)
    assert all(r["end_user_id"] == "webrtc-caller" and r["cost_usd"] is not None for r in rows)

    # The transcript holds what the fake transcribed and what the bot answered.
    turns = row["transcript"]
    assert [t["content"] for t in turns if t["role"] == "user"] == TRANSCRIPTS
    assert [t["content"] for t in turns if t["role"] == "assistant"] == REPLIES

    # Processed as usual: insights (metered too), then the signed webhook.
    assert row["insights"]["summary"] == GOOD_INSIGHTS["summary"]
    [insights] = [r for r in rows if r["category"] == "insights"]
    [asked] = [x for x in openai_server.served if not x.stream]
    assert (insights["input_tokens"], insights["output_tokens"]) == (
        asked.usage.prompt_tokens,
        asked.usage.completion_tokens,
    )
    [delivery] = webhooks.requests
    assert delivery["path"] == "/calls"
    assert json.loads(delivery["body"])["type"] == "call.completed"

    # Each answer was timed from the end of the caller's speech to the bot's first audio.
    timed = (metrics.REGISTRY.get_sample_value("flow_voice_to_voice_seconds_count") or 0) - timed
    assert timed == len(REPLIES)

    # The caller heard the bot: its speech came back as sound, about as long as served.
    heard = first + second
    print(
        f"\nwebrtc call: {elapsed:.1f} s; uploads {[str(u.seconds) for u in uploads]} s; "
        f"heard {heard:.2f} s of {served_speech_seconds(openai_server):.2f} s served"
    )
    assert 0.8 < heard / served_speech_seconds(openai_server) < 1.25


async def test_a_caller_who_never_connects_fails_the_call_and_is_billed_nothing(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    openai_server: FakeOpenAI,
    caller: Caller,
    tmp_path: Path,
) -> None:
    timeout = 1.5
    s = webrtc_settings(
        settings, openai_server.base_url, tmp_path, flow_webrtc_connect_timeout_seconds=timeout
    )
    async with flow_app(s) as (app, client):
        started = time.monotonic()
        res = await client.post(
            "/api/bot/join",
            json={
                "transport": "webrtc",
                "webrtc_offer": await caller.offer(),
                # Greeted only once connected: never, here.
                "bot_config": {"greeting": "Hello, this is Flow."},
            },
            headers=bearer(api_key),
        )
        assert res.status_code == 202, res.text
        thread_id = res.json()["workflow_thread_id"]
        # The caller never takes the answer: its peer never connects.
        await _settled(app, thread_id, wait_seconds=timeout + 15)
        ended_after = time.monotonic() - started

    row = await threads_repo.get_thread(sb, thread_id)
    assert row is not None
    assert (row["status"], row["error_stage"], row["error_code"]) == (
        "failed",
        "call",
        "webrtc_timeout",
    ), row
    assert "not up within 1.5 s" in row["error_message"]
    assert timeout <= ended_after < timeout + 10
    assert await ledger(sb, thread_id) == []
    assert not row["usage_stats"].get("events")
    assert openai_server.speech == [] and openai_server.served == [] == openai_server.uploads


@pytest.mark.parametrize("when", ["answered", "running"])
async def test_a_peer_that_closes_before_it_connects_fails_the_call(
    when: str,
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    openai_server: FakeOpenAI,
    caller: Caller,
    tmp_path: Path,
) -> None:
    s = webrtc_settings(settings, openai_server.base_url, tmp_path)
    async with flow_app(s) as (app, client):
        res = await client.post(
            "/api/bot/join",
            json={"transport": "webrtc", "webrtc_offer": await caller.offer()},
            headers=bearer(api_key),
        )
        assert res.status_code == 202, res.text
        thread_id = res.json()["workflow_thread_id"]
        # The connection fails before it is up (aiortc closes a failed one), as soon as
        # it is answered or once the call runs.
        running = app.state.runner._calls[thread_id]
        for _ in range(1000 if when == "running" else 0):  # at most 10 s
            if running.bot is not None:
                break
            await asyncio.sleep(0.01)
        assert when == "answered" or running.bot is not None
        await running.peer.connection.pc.close()
        await _settled(app, thread_id, wait_seconds=15)

    row = await threads_repo.get_thread(sb, thread_id)
    assert row is not None
    assert (row["status"], row["error_code"]) == ("failed", "webrtc_failed"), row
    assert await ledger(sb, thread_id) == []
