"""Simulated calls through the real pipeline: the real OpenAILLMService against the
local streaming server, fake STT/TTS with known usage, the real ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from supabase import AsyncClient

from flow.bot.contract import AtCapacity
from flow.db import threads as threads_repo
from flow.metering.tokenizer import count_message_tokens, count_tokens
from tests.bot.helpers import (
    CALLER_AUDIO_SECONDS,
    FakeVoices,
    bot_settings,
    ledger,
    make_runner,
    request_for,
)
from tests.fakes.openai_server import FakeOpenAI

REPLIES = ["Hello there. How can I help you today?", "Sure thing. It is done.", "Goodbye!"]


@pytest.fixture
async def openai_server() -> AsyncIterator[FakeOpenAI]:
    server = await FakeOpenAI(replies=list(REPLIES)).start()
    yield server
    await server.stop()


async def test_simulated_call_records_every_unit_exactly_once(
    sb: AsyncClient,
    settings: Any,
    thread: dict[str, Any],
    openai_server: FakeOpenAI,
    tmp_path: Path,
) -> None:
    script = ["hi", "please do the thing", "bye"]
    voices = FakeVoices()
    results: list[Any] = []
    runner = make_runner(
        bot_settings(settings, openai_server.base_url, tmp_path), sb, voices, results=results
    )
    request = request_for(thread, script)
    await runner.submit(request)
    await runner.wait(request.workflow_thread_id)

    tid = request.workflow_thread_id
    rows = await ledger(sb, tid)
    llm = [r for r in rows if r["kind"] == "llm"]
    tts = [r for r in rows if r["kind"] == "tts"]
    stt = [r for r in rows if r["kind"] == "stt"]

    served = openai_server.served
    assert len(served) == len(script) and all(s.usage_sent for s in served)
    # Every inference the server reported is in the ledger once, with its numbers.
    assert sorted(
        (r["input_tokens"], r["output_tokens"], r["cache_read_tokens"]) for r in llm
    ) == sorted(
        (s.usage.prompt_tokens, s.usage.completion_tokens, s.usage.cached_tokens) for s in served
    )
    assert not any(r["estimated"] for r in rows)
    assert all(r["latency_ms"] is not None and r["cost_usd"] is not None for r in llm)
    assert all(r["end_user_id"] == "end-user-1" and r["provider"] for r in rows)
    # Every price says where it came from (or the row is unpriced and says nothing).
    assert all((r["price_source"] is None) == (r["cost_usd"] is None) for r in rows)
    assert {r["price_source"].split()[0] for r in llm} == {"genai-prices"}
    assert sum(r["characters"] for r in tts) == voices.characters > 0
    assert len(tts) == sum(len(t.reported_characters) for t in voices.ttss)
    assert sum(Decimal(r["audio_seconds_text"]) for r in stt) == voices.seconds
    assert voices.seconds == Decimal(repr(CALLER_AUDIO_SECONDS)) * len(script)

    row = await threads_repo.get_thread(sb, tid)
    assert row is not None
    stats = row["usage_stats"]
    assert stats["llm_calls"] == len(served)
    assert stats["input_tokens"] == sum(s.usage.prompt_tokens for s in served)
    assert stats["output_tokens"] == sum(s.usage.completion_tokens for s in served)
    assert stats["cache_read_tokens"] == sum(s.usage.cached_tokens for s in served)
    assert stats["tts_characters"] == voices.characters
    assert Decimal(str(stats["stt_seconds"])) == voices.seconds
    assert stats["events"] == len(rows)
    assert Decimal(str(stats["total_cost_usd"])) == sum(Decimal(str(r["cost_usd"])) for r in rows)

    # The transcript is the script and the replies, in order; the thread is done.
    assert row["status"] == "completed"
    turns = row["transcript"]
    assert [t["content"] for t in turns if t["role"] == "user"] == script
    assert [t["content"] for t in turns if t["role"] == "assistant"] == REPLIES
    assert not any(t["interrupted"] for t in turns)
    assert row["bot_started_at"] and row["bot_ended_at"]

    # post_call ran while the thread was processing, with every recorded event.
    [(_, result, status)] = results
    assert status == "processing"
    assert result.end_reason == "completed"
    assert {str(e.id) for e in result.usage_events} == {r["id"] for r in rows}


async def test_interrupted_reply_is_recorded_as_estimated(
    sb: AsyncClient, settings: Any, thread: dict[str, Any], tmp_path: Path
) -> None:
    long_reply = " ".join(f"word{i}" for i in range(60))
    server = await FakeOpenAI(replies=[long_reply, "Okay, stopping."]).start()
    try:
        server.slow_word_seconds = 0.03  # ~1.8 s for the long reply
        voices = FakeVoices()
        # The caller talks over the bot after 0.5 s.
        runner = make_runner(
            bot_settings(settings, server.base_url, tmp_path), sb, voices, patience=0.5
        )
        request = request_for(thread, ["tell me a long story", "stop"])
        await runner.submit(request)
        await runner.wait(request.workflow_thread_id)
    finally:
        await server.stop()

    rows = await ledger(sb, request.workflow_thread_id)
    llm = [r for r in rows if r["kind"] == "llm"]
    estimated = [r for r in llm if r["estimated"]]
    reported = [r for r in llm if not r["estimated"]]
    assert [s.usage_sent for s in server.served] == [False, True]
    # The cut reply is estimated once; the reply that reported usage is not estimated.
    assert len(estimated) == 1 and len(reported) == 1
    est = estimated[0]
    assert est["input_tokens"] == count_message_tokens(server.served[0].messages, "gpt-4o-mini")
    assert 0 < est["output_tokens"] < count_tokens(long_reply, "gpt-4o-mini")
    assert est["cost_usd"] is not None
    assert reported[0]["input_tokens"] == server.served[1].usage.prompt_tokens

    row = await threads_repo.get_thread(sb, request.workflow_thread_id)
    assert row is not None and row["status"] == "completed"
    assistant = [t for t in row["transcript"] if t["role"] == "assistant"]
    assert assistant[0]["interrupted"] is True
    assert assistant[-1]["content"] == "Okay, stopping." and not assistant[-1]["interrupted"]


async def test_runner_refuses_calls_beyond_max_bots(
    sb: AsyncClient, settings: Any, thread: dict[str, Any], tmp_path: Path
) -> None:
    server = await FakeOpenAI(replies=["slow " * 50]).start()
    server.slow_word_seconds = 0.05
    try:
        runner = make_runner(
            bot_settings(settings, server.base_url, tmp_path, flow_max_bots=1), sb, FakeVoices()
        )
        request = request_for(thread, ["hello"])
        await runner.submit(request)
        assert not runner.has_capacity()
        with pytest.raises(AtCapacity):
            await runner.submit(request_for({**thread, "workflow_thread_id": "x"}, ["hi"]))
        assert await runner.stop(request.workflow_thread_id)
        await runner.wait(request.workflow_thread_id)
        assert runner.has_capacity(), runner.active_calls
        row = await threads_repo.get_thread(sb, request.workflow_thread_id)
        assert row is not None and row["status"] == "completed"
    finally:
        await server.stop()
