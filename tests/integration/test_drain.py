"""Rolling deploys drop no call: ``flow serve`` processes behind a real HAProxy, on the
test session's stack, SIGTERMed as an orchestrator does it.

The vendors are one local OpenAI-compatible server that records every completion and
TTS request it answered, so each ledger is compared with what was billed (lost and
doubled events, as in the fault suite).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from supabase import AsyncClient

from flow import localstack
from flow.db import threads as threads_repo
from flow.db.client import call, rows_of
from flow.localstack.cluster import HAProxy, haproxy_config
from tests.fakes.openai_server import FakeOpenAI
from tests.faults.test_call_faults import call_ledger, serve_env, tally
from tests.served import ServedFlow

SCRIPT = [
    "Hello, are you open today?",
    "And tomorrow?",
    "And on Sunday?",
    "Thank you, goodbye.",
]
LONG_SCRIPT = [f"Tell me about item number {n}, please." for n in range(30)]
REPLIES = [
    "Yes, we are open from nine to five today. Anything else?",
    "Tomorrow we open at ten and close at four. Anything else?",
    "On Sunday we are closed all day long. Anything else?",
    "You are welcome, goodbye.",
]
GOODBYE = "This line closes now for maintenance. Goodbye."
CHECK_MS = 200


@pytest.fixture
async def vendor() -> AsyncIterator[FakeOpenAI]:
    # Each reply takes about a second and a half: ten calls stay live while the test acts.
    server = await FakeOpenAI(replies=REPLIES, slow_word_seconds=0.1).start()
    server.speech_chunk_seconds = 0.02
    yield server
    await server.stop()


def instance_env(vendor: FakeOpenAI, spool: Path, **more: str) -> dict[str, str]:
    return {
        **serve_env(vendor, spool),
        "FLOW_METER_FLUSH_SECONDS": "1",
        "FLOW_SHUTDOWN_GOODBYE": GOODBYE,
        **more,
    }


async def join(url: str, key: dict[str, Any], script: list[str] = SCRIPT) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=20) as client:
        res = await client.post(
            "/api/bot/join",
            headers={"Authorization": f"Bearer {key['plaintext']}"},
            json={"transport": "simulated", "script": script, "process_insights": False},
        )
    assert res.status_code == 202, res.text
    return str(res.json()["workflow_thread_id"])


async def threads(sb: AsyncClient, ids: list[str]) -> dict[str, dict[str, Any]]:
    res = await call(
        sb.table("workflow_threads")
        .select("workflow_thread_id,status,error_code,instance_id,transcript,usage_stats")
        .in_("workflow_thread_id", ids)
        .execute
    )
    return {str(r["workflow_thread_id"]): r for r in rows_of(res)}


async def until(check: Any, what: str, seconds: float = 30.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        found = await check()
        if found:
            return found
        assert time.monotonic() < deadline, f"not reached in {seconds}s: {what}"
        await asyncio.sleep(0.1)


async def exits(flow: ServedFlow, seconds: float) -> int:
    assert flow.proc is not None
    return await asyncio.to_thread(flow.proc.wait, seconds)


async def assert_ledgers_exact(
    sb: AsyncClient, vendor: FakeOpenAI, ids: list[str], name: str
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for tid in ids:
        own = await call_ledger(sb, tid)
        row = await threads_repo.get_thread(sb, tid)
        assert row is not None and row["usage_stats"]["events"] == len(own), (tid, row)
        rows += own
    result = tally(name, vendor, rows)
    result.report()
    assert (result.lost, result.doubled) == (0, 0), (rows, vendor.served, vendor.speech)
    return rows


async def test_sigterm_behind_haproxy_fails_no_call_and_new_joins_go_to_the_other_instance(
    stack: localstack.StackInfo,
    sb: AsyncClient,
    api_key: dict[str, Any],
    vendor: FakeOpenAI,
    tmp_path: Path,
) -> None:
    first = ServedFlow(stack, tmp_path / "first.log", **instance_env(vendor, tmp_path / "s1"))
    second = ServedFlow(stack, tmp_path / "second.log", **instance_env(vendor, tmp_path / "s2"))
    port, stats = localstack.free_port(None), localstack.free_port(None)
    config = haproxy_config(
        {"first": first.port, "second": second.port}, port, stats, check_ms=CHECK_MS
    )
    proxy = HAProxy(config, tmp_path)
    url = f"http://127.0.0.1:{port}"

    async def states(want: dict[str, str]) -> bool:
        try:
            return await asyncio.to_thread(proxy.server_states, stats) == want
        except OSError:  # HAProxy is still starting
            return False

    try:
        await asyncio.to_thread(first.start)
        await asyncio.to_thread(second.start)
        proxy.start()
        await until(lambda: states({"first": "UP", "second": "UP"}), "both up")
        early = [await join(first.url, api_key) for _ in range(10)]
        live = await threads(sb, early)
        assert all(r["status"] in ("pending", "starting", "running") for r in live.values())

        assert first.proc is not None
        first.proc.send_signal(signal.SIGTERM)
        late = [await join(url, api_key) for _ in range(4)]
        # Draining, the first is out of the rotation but still answers its probes.
        await until(lambda: states({"first": "DOWN", "second": "UP"}), "first drained")
        assert first.proc.poll() is None or first.proc.returncode == 0
        assert await exits(first, 60) == 0
        ended = await threads(sb, early)
        assert all(r["status"] in ("processing", "completed") for r in ended.values()), ended
        await until(lambda: _all_completed(sb, early + late), "every call completed", seconds=60)
    finally:
        first.kill()
        second.kill()
        proxy.stop()

    rows = await threads(sb, early + late)
    pid_of = {first.proc.pid: "first", second.proc.pid: "second"}  # type: ignore[union-attr]
    ran_on = {tid: pid_of[int(r["instance_id"].split(":")[-2])] for tid, r in rows.items()}
    assert {ran_on[t] for t in early} == {"first"}
    assert {ran_on[t] for t in late} == {"second"}
    assert all(r["status"] == "completed" for r in rows.values()), rows
    assert not any(GOODBYE in str(r["transcript"]) for r in rows.values())
    assert "draining" in first.log() and "drained: every call has ended" in first.log()
    await assert_ledgers_exact(sb, vendor, early + late, "SIGTERM behind HAProxy")


async def _all_completed(sb: AsyncClient, ids: list[str]) -> bool:
    return all(r["status"] == "completed" for r in (await threads(sb, ids)).values())


async def test_calls_still_live_when_the_drain_time_is_up_hear_the_goodbye_and_complete(
    stack: localstack.StackInfo,
    sb: AsyncClient,
    api_key: dict[str, Any],
    vendor: FakeOpenAI,
    tmp_path: Path,
) -> None:
    env = instance_env(vendor, tmp_path / "spool", FLOW_DRAIN_SECONDS="1")
    with ServedFlow(stack, tmp_path / "flow.log", **env) as flow:
        tids = [await join(flow.url, api_key, LONG_SCRIPT) for _ in range(2)]
        await until(lambda: _answered(vendor, 2), "both calls talking")
        assert flow.proc is not None
        flow.proc.send_signal(signal.SIGTERM)
        async with httpx.AsyncClient(base_url=flow.url, timeout=5) as client:

            async def draining() -> bool:
                ready = await client.get("/health/ready")
                return ready.status_code == 503 and ready.json()["error"] == "draining"

            await until(draining, "not ready: draining")
            assert (await client.get("/health/live")).status_code == 200
        assert await exits(flow, 60) == 0

    rows = await threads(sb, tids)
    for row in rows.values():
        assert row["status"] == "completed", row
        said = [t["content"] for t in row["transcript"] if t["role"] == "assistant"]
        assert said[-1] == GOODBYE, said
        assert len([t for t in row["transcript"] if t["role"] == "user"]) < len(LONG_SCRIPT)
    assert sum(s.text == GOODBYE for s in vendor.speech) == 2, "the goodbye is spoken (and billed)"
    await assert_ledgers_exact(sb, vendor, tids, "drain time up")


async def _answered(vendor: FakeOpenAI, n: int) -> bool:
    return len(vendor.served) >= n


async def test_a_second_signal_ends_calls_at_once_and_still_flushes_their_usage(
    stack: localstack.StackInfo,
    sb: AsyncClient,
    api_key: dict[str, Any],
    vendor: FakeOpenAI,
    tmp_path: Path,
) -> None:
    env = instance_env(vendor, tmp_path / "spool", FLOW_METER_FLUSH_SECONDS="60")
    with ServedFlow(stack, tmp_path / "flow.log", **env) as flow:
        tids = [await join(flow.url, api_key, LONG_SCRIPT) for _ in range(2)]
        await until(lambda: _answered(vendor, 2), "both calls talking")
        assert flow.proc is not None
        flow.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        flow.proc.send_signal(signal.SIGINT)
        assert await exits(flow, 30) == 0
    assert "ending the live calls now" in flow.log()
    rows = await threads(sb, tids)
    for row in rows.values():
        assert (row["status"], row["error_code"]) == ("failed", "shutdown"), row
    await assert_ledgers_exact(sb, vendor, tids, "second signal")
