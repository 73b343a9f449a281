"""Calls that end badly still record their usage exactly once: database outage, task
cancelled mid-turn, maximum duration, shutdown."""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from supabase import AsyncClient

from flow.bot.runner import create_runner
from flow.db import call_state
from flow.db import threads as threads_repo
from flow.db.client import create_client
from flow.metering.events import UsageEvent, UsageKind
from flow.metering.meter import Meter
from flow.metering.spool import SPOOL_FILE, replay_spool
from tests.bot.helpers import FakeVoices, bot_settings, ledger, make_runner, request_for
from tests.fakes.openai_server import FakeOpenAI


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(predicate: Any, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def call_task(thread_id: str) -> asyncio.Task[Any]:
    [task] = [t for t in asyncio.all_tasks() if t.get_name() == f"call-{thread_id}"]
    return task


async def test_database_outage_during_call_spools_usage_and_replay_is_exact(
    sb: AsyncClient, settings: Any, thread: dict[str, Any], tmp_path: Path
) -> None:
    server = await FakeOpenAI(replies=["One.", "Two."]).start()
    try:
        down = bot_settings(
            settings,
            server.base_url,
            tmp_path,
            supabase_url=f"http://127.0.0.1:{closed_port()}",
        )
        unreachable = await create_client(down)
        voices = FakeVoices()
        runner = make_runner(down, unreachable, voices)
        request = request_for(thread, ["first", "second"])
        await runner.submit(request)
        await runner.wait(request.workflow_thread_id)
    finally:
        await server.stop()

    tid = request.workflow_thread_id
    assert await ledger(sb, tid) == []  # nothing reached the database...
    assert (tmp_path / SPOOL_FILE).stat().st_size > 0  # ...everything is spooled

    assert await replay_spool(sb, tmp_path) > 0
    rows = await ledger(sb, tid)
    llm = [r for r in rows if r["kind"] == "llm"]
    assert sorted(r["input_tokens"] for r in llm) == sorted(
        s.usage.prompt_tokens for s in server.served
    )
    assert sum(r["characters"] for r in rows) == voices.characters
    assert sum(Decimal(r["audio_seconds_text"]) for r in rows) == voices.seconds

    # A second replay (or the same events spooled again) counts nothing twice.
    assert await replay_spool(sb, tmp_path) == 0
    row = await threads_repo.get_thread(sb, tid)
    assert row is not None
    assert row["usage_stats"]["events"] == len(rows)
    assert row["usage_stats"]["input_tokens"] == sum(s.usage.prompt_tokens for s in server.served)


async def test_call_task_cancelled_mid_turn_keeps_its_usage(
    sb: AsyncClient, settings: Any, thread: dict[str, Any], tmp_path: Path
) -> None:
    server = await FakeOpenAI(replies=[" ".join(["blah"] * 100)]).start()
    server.slow_word_seconds = 0.05
    try:
        voices = FakeVoices()
        runner = make_runner(bot_settings(settings, server.base_url, tmp_path), sb, voices)
        request = request_for(thread, ["talk to me"])
        await runner.submit(request)
        await until(lambda: server.served and server.served[0].words_sent >= 4)
        task = call_task(request.workflow_thread_id)
        task.cancel()
        await asyncio.wait([task])
        assert task.cancelled()
    finally:
        await server.stop()

    rows = await ledger(sb, request.workflow_thread_id)
    llm = [r for r in rows if r["kind"] == "llm"]
    assert len(llm) == 1 and llm[0]["estimated"] and llm[0]["output_tokens"] >= 4
    assert sum(Decimal(r["audio_seconds_text"]) for r in rows) == voices.seconds > 0
    row = await threads_repo.get_thread(sb, request.workflow_thread_id)
    assert row is not None
    assert (row["status"], row["error_stage"], row["error_code"]) == (
        "failed",
        "call",
        "cancelled",
    )
    assert row["usage_stats"]["events"] == len(rows)
    assert row["transcript"][0] == {**row["transcript"][0], "role": "user", "content": "talk to me"}


async def test_call_over_max_duration_is_ended_with_its_usage(
    sb: AsyncClient, settings: Any, thread: dict[str, Any], tmp_path: Path
) -> None:
    server = await FakeOpenAI(replies=[" ".join(["on"] * 200)]).start()
    server.slow_word_seconds = 0.05  # a 10 s reply
    try:
        runner = make_runner(
            bot_settings(settings, server.base_url, tmp_path, flow_max_call_seconds=1.0),
            sb,
            FakeVoices(),
        )
        request = request_for(thread, ["go on forever"])
        await runner.submit(request)
        await runner.wait(request.workflow_thread_id)
    finally:
        await server.stop()

    row = await threads_repo.get_thread(sb, request.workflow_thread_id)
    assert row is not None and row["status"] == "completed"
    lasted = datetime.fromisoformat(row["bot_ended_at"]) - datetime.fromisoformat(
        row["bot_started_at"]
    )
    assert lasted.total_seconds() >= 1.0
    # Ended by the limit, mid-reply: the 10 s stream never finished.
    assert not server.served[0].usage_sent
    assert server.served[0].words_sent < 200
    llm = [r for r in await ledger(sb, request.workflow_thread_id) if r["kind"] == "llm"]
    assert len(llm) == 1 and llm[0]["estimated"]


async def test_shutdown_ends_every_call_flushes_and_marks_threads(
    sb: AsyncClient, settings: Any, api_key: dict[str, Any], tmp_path: Path
) -> None:
    server = await FakeOpenAI(replies=[" ".join(["la"] * 200)]).start()
    server.slow_word_seconds = 0.05
    threads = [
        await threads_repo.create_thread(sb, api_key_id=api_key["id"], transport="simulated")
        for _ in range(2)
    ]
    try:
        runner = make_runner(bot_settings(settings, server.base_url, tmp_path), sb, FakeVoices())
        for t in threads:
            await runner.submit(request_for(t, ["sing"]))
        await until(lambda: len(server.served) == 2 and server.served[1].words_sent >= 2)
        await runner.shutdown()
        assert runner.active_calls == [] and not runner.has_capacity()
    finally:
        await server.stop()

    for t in threads:
        row = await threads_repo.get_thread(sb, t["workflow_thread_id"])
        assert row is not None
        assert (row["status"], row["error_code"]) == ("failed", "shutdown")
        rows = await ledger(sb, str(t["workflow_thread_id"]))
        assert {"stt", "llm"} <= {r["kind"] for r in rows}
        assert [r["estimated"] for r in rows if r["kind"] == "llm"] == [True]
        assert row["usage_stats"]["events"] == len(rows)


async def test_usage_spooled_while_running_reaches_the_ledger_without_a_restart(
    sb: AsyncClient, settings: Any, thread: dict[str, Any], tmp_path: Path
) -> None:
    """The runner replays the spool periodically, not only when it starts."""
    runner = create_runner(
        bot_settings(settings, "http://127.0.0.1:9/v1", tmp_path),
        sb,
        housekeeping_seconds=0.2,
    )
    try:
        down = bot_settings(
            settings,
            "http://127.0.0.1:9/v1",
            tmp_path,
            supabase_url=f"http://127.0.0.1:{closed_port()}",
        )
        meter = Meter(await create_client(down), spool_dir=tmp_path, backoff_seconds=0.01)
        events = [
            UsageEvent(
                workflow_thread_id=thread["workflow_thread_id"],
                api_key_id=thread["api_key_id"],
                kind=UsageKind.TTS,
                provider="openai",
                model="tts-1",
                characters=10 + i,
                cost_usd=Decimal("0.000015") * (10 + i),
            )
            for i in range(5)
        ]
        meter.start()
        for event in events:
            meter.add(event)
        await meter.close()  # the database is unreachable: the batch is spooled

        tid = thread["workflow_thread_id"]
        deadline = time.monotonic() + 20
        while len(await ledger(sb, tid)) < len(events):
            assert time.monotonic() < deadline, "the spool was not replayed"
            await asyncio.sleep(0.1)
        assert {r["id"] for r in await ledger(sb, tid)} == {str(e.id) for e in events}
        assert not (tmp_path / SPOOL_FILE).exists() or (tmp_path / SPOOL_FILE).stat().st_size == 0
    finally:
        await runner.shutdown()


async def test_a_call_is_stopped_through_another_instance(
    sb: AsyncClient, settings: Any, thread: dict[str, Any], tmp_path: Path
) -> None:
    """The stop request lands on an instance that does not run the call: it is recorded
    in the database and the instance running the call ends it at once."""
    server = await FakeOpenAI(replies=[" ".join(["word"] * 400)], slow_word_seconds=0.05).start()
    try:
        s = bot_settings(settings, server.base_url, tmp_path)
        voices = FakeVoices()
        runner = create_runner(s, sb, services_factory=voices, stop_poll_seconds=0.1)
        request = request_for(thread, ["tell me a long story", "and another"])
        await runner.submit(request)
        tid = request.workflow_thread_id
        await until(lambda: bool(server.served))
        row = await threads_repo.get_thread(sb, tid)
        assert row is not None and row["status"] == "running"

        # What POST /api/bot/{id}/stop does on an instance without the call.
        outcome = await call_state.request_stop(sb, tid, stale_seconds=30)
        assert outcome is call_state.StopOutcome.REQUESTED
        await asyncio.wait_for(runner.wait(tid), timeout=60)
        # The reply was cut: the stop did not wait for the 400-word stream to finish.
        assert server.served[0].words_sent < 400
    finally:
        await runner.shutdown()
        await server.stop()
    row = await threads_repo.get_thread(sb, tid)
    assert row is not None
    assert row["status"] == "completed", (row["status"], row["error_code"])
    assert row["bot_ended_at"] is not None
    # The cut reply was metered (estimated), nothing lost.
    assert [r["estimated"] for r in await ledger(sb, tid) if r["kind"] == "llm"] == [True]
    # A finished call is no longer stoppable from anywhere.
    outcome = await call_state.request_stop(sb, tid, stale_seconds=30)
    assert outcome is call_state.StopOutcome.NOT_RUNNING


async def test_threads_whose_instance_died_are_marked_failed(
    sb: AsyncClient, settings: Any, api_key: dict[str, Any], tmp_path: Path
) -> None:
    """A call cannot outlive FLOW_MAX_CALL_SECONDS: an older unfinished thread has no
    instance running it any more, and the runner's housekeeping says so."""
    s = bot_settings(settings, "http://127.0.0.1:9/v1", tmp_path)
    long_ago = (datetime.now(UTC) - timedelta(seconds=s.flow_max_call_seconds, days=1)).isoformat()
    orphan = await threads_repo.create_thread(
        sb, api_key_id=api_key["id"], transport="simulated", status="running", created_at=long_ago
    )
    live = await threads_repo.create_thread(
        sb, api_key_id=api_key["id"], transport="simulated", status="running"
    )
    runner = create_runner(s, sb, housekeeping_seconds=0.1)
    try:
        deadline = time.monotonic() + 20
        while True:
            row = await threads_repo.get_thread(sb, orphan["workflow_thread_id"])
            assert row is not None
            if row["status"] == "failed":
                break
            assert time.monotonic() < deadline, "the abandoned thread was not marked"
            await asyncio.sleep(0.1)
    finally:
        await runner.shutdown()
    assert (row["error_stage"], row["error_code"]) == ("call", "instance_lost")
    fresh = await threads_repo.get_thread(sb, live["workflow_thread_id"])
    assert fresh is not None and fresh["status"] == "running"
