"""Faults during calls, each ending in one line: what the vendors billed (metered), what
the ledger holds, what was lost and what was counted twice.

``flow serve`` runs as a real process for the faults that end a process (kill -9 at
points chosen by a seeded random, SIGTERM); the vendors are one local OpenAI-compatible
server that records every completion and TTS request it answered. The database faults
put a gateway that can be switched off between the runner and the database.

Counting: an LLM completion is billed once its usage chunk went out, a TTS request once
its whole audio went out. Everything billed before a kill must be in the ledger: Flow
writes each unit ahead while the vendor is still sending it. A completion or a TTS
request the fault cut in the middle may be in the ledger once (an LLM reply as an
estimate) or not at all.
lost = billed units with no ledger event; doubled = ledger events beyond the units the
vendor served.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import ClientSession, web
from supabase import AsyncClient

from flow import localstack
from flow.db import threads as threads_repo
from flow.db.client import call, rows_of
from flow.localstack.gateway import build_app
from flow.metering.spool import replay_spool
from flow.metering.wal import WAL_DIR
from tests.bot.test_call_faults import until
from tests.fakes.openai_server import FakeOpenAI
from tests.faults.report import report_fault
from tests.served import ServedFlow

pytestmark = pytest.mark.faults

SCRIPT = [
    "Hello, I would like to know your opening hours.",
    "And are you open on public holidays?",
    "Can I book a visit for Friday morning?",
    "Thank you, that is all.",
]
REPLIES = [
    "We are open from nine to five on weekdays. Is there anything else?",
    "On public holidays we are closed. Anything else I can help with?",
    "Friday morning works. I have booked you in at ten.",
    "You are welcome, goodbye.",
]
# Each kills the call part way (seeds whose kill comes after the call's end add nothing).
KILL_SEEDS = [3, 7, 11, 31, 41, 43]
SETTLE_SECONDS = 40.0


@dataclass
class Tally:
    """A fault's figures."""

    name: str
    metered: int
    in_ledger: int
    lost: int
    doubled: int

    def report(self) -> str:
        return report_fault(self.name, self.metered, self.in_ledger, self.lost, self.doubled)


async def call_ledger(sb: AsyncClient, tid: str) -> list[dict[str, Any]]:
    res = await call(
        sb.table("usage_events")
        .select("id,kind,input_tokens,output_tokens,characters,estimated")
        .eq("workflow_thread_id", tid)
        .execute
    )
    return rows_of(res)


def tally(
    name: str, vendor: FakeOpenAI, rows: list[dict[str, Any]], *, cut_at: float | None = None
) -> Tally:
    """Compare the ledger with what the vendor served. With ``cut_at`` (when the process
    was killed), every unit the vendor had finished before it must be in the ledger
    exactly once, none excused as in flight: Flow writes each ahead while the vendor is
    still sending it (a speech request's characters when its answer starts, a reply as
    an estimate at its first token). Only what the vendor finished after the kill may
    be missing."""
    horizon = float("inf") if cut_at is None else cut_at
    llm_rows = [r for r in rows if r["kind"] == "llm"]
    tts_rows = [r for r in rows if r["kind"] == "tts"]
    billed_llm = [s for s in vendor.served if s.usage_sent and (s.usage_sent_at or 0) <= horizon]
    billed_tts = [s for s in vendor.speech if s.body_sent and (s.body_sent_at or 0) <= horizon]
    # Every exact LLM event is one served completion's usage (each has its own numbers).
    exact = [(r["input_tokens"], r["output_tokens"]) for r in llm_rows if not r["estimated"]]
    usages = [(s.usage.prompt_tokens, s.usage.completion_tokens) for s in vendor.served]
    assert all(u in usages for u in exact) and len(set(exact)) == len(exact), exact
    estimated = len(llm_rows) - len(exact)
    unmatched = [
        s for s in billed_llm if (s.usage.prompt_tokens, s.usage.completion_tokens) not in exact
    ]
    # A billed reply with no exact event must be one of the estimates (cut by the fault).
    lost_llm = max(0, len(unmatched) - estimated)
    characters = Counter(r["characters"] for r in tts_rows)
    lost_tts = 0
    for speech in billed_tts:
        if characters[len(speech.text)] > 0:
            characters[len(speech.text)] -= 1
        else:
            lost_tts += 1
    doubled = max(0, len(llm_rows) - len(vendor.served)) + max(
        0, len(tts_rows) - len(vendor.speech)
    )
    finished = sum(1 for s in vendor.served if s.usage_sent) + sum(
        1 for s in vendor.speech if s.body_sent
    )
    return Tally(name, finished, len(rows), lost_llm + lost_tts, doubled)


async def settled(
    sb: AsyncClient, tid: str, spool: Path, *, statuses: tuple[str, ...]
) -> dict[str, Any]:
    """Wait (bounded) until the call is over and its usage has stopped moving."""
    deadline = asyncio.get_running_loop().time() + SETTLE_SECONDS
    last = -1
    while True:
        row = await threads_repo.get_thread(sb, tid)
        assert row is not None
        count = len(await call_ledger(sb, tid))
        wal_left = list((spool / WAL_DIR).glob("*.jsonl")) if (spool / WAL_DIR).exists() else []
        if row["status"] in statuses and count == last and not wal_left:
            return row
        last = count
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not settled: {row['status']}, {count} rows, {wal_left}")
        await asyncio.sleep(0.5)


def serve_env(vendor: FakeOpenAI, spool: Path) -> dict[str, str]:
    return {
        "OPENAI_BASE_URL": vendor.base_url,
        "FLOW_SPOOL_DIR": str(spool),
        # The worst case for a kill: nothing is flushed to the ledger before the end.
        "FLOW_METER_FLUSH_SECONDS": "60",
        "FLOW_INSTANCE_STALE_SECONDS": "3",
        "FLOW_GREETING": "Hello, this is the Flow test line.",
        "FLOW_LOG_LEVEL": "WARNING",
    }


async def join(flow: ServedFlow, key: dict[str, Any]) -> str:
    async with httpx.AsyncClient(base_url=flow.url, timeout=10) as client:
        res = await client.post(
            "/api/bot/join",
            headers={"Authorization": f"Bearer {key['plaintext']}"},
            json={"transport": "simulated", "script": SCRIPT, "process_insights": False},
        )
    assert res.status_code == 202, res.text
    return str(res.json()["workflow_thread_id"])


@pytest.fixture
async def vendor() -> AsyncIterator[FakeOpenAI]:
    server = await FakeOpenAI(replies=REPLIES, slow_word_seconds=0.02).start()
    server.speech_chunk_seconds = 0.02
    yield server
    await server.stop()


@pytest.mark.parametrize("seed", KILL_SEEDS)
async def test_kill_9_mid_call_loses_and_doubles_nothing(
    stack: localstack.StackInfo,
    sb: AsyncClient,
    api_key: dict[str, Any],
    vendor: FakeOpenAI,
    tmp_path: Path,
    seed: int,
) -> None:
    spool = tmp_path / "spool"
    env = serve_env(vendor, spool)
    with ServedFlow(stack, tmp_path / "first.log", **env) as first:
        tid = await join(first, api_key)
        await asyncio.sleep(random.Random(seed).uniform(0.5, 4.0))
        cut_at = time.monotonic()
        first.kill()
    # The next start of the instance (same disk) replays what the killed one held, and
    # fails the call it was running once its heartbeat is stale.
    with ServedFlow(stack, tmp_path / "second.log", **env):
        row = await settled(sb, tid, spool, statuses=("failed", "completed"))
    if row["status"] == "failed":
        assert row["error_code"] == "instance_lost"
    rows = await call_ledger(sb, tid)
    result = tally(f"kill -9 mid-call (seed {seed})", vendor, rows, cut_at=cut_at)
    result.report()
    assert (result.lost, result.doubled) == (0, 0), (rows, vendor.served, vendor.speech)
    assert result.metered > 0 or vendor.served, "the kill came after the call had started"


async def test_sigterm_mid_call_loses_and_doubles_nothing(
    stack: localstack.StackInfo,
    sb: AsyncClient,
    api_key: dict[str, Any],
    vendor: FakeOpenAI,
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"
    env = {**serve_env(vendor, spool), "FLOW_LOG_LEVEL": "INFO"}
    with ServedFlow(stack, tmp_path / "flow.log", **env) as flow:
        tid = await join(flow, api_key)
        await asyncio.sleep(1.2)
        # The instance drains: the call goes on to its end (the vendor answers meanwhile,
        # in this loop), then the process exits 0.
        assert await asyncio.to_thread(flow.terminate, 40) == 0
        assert "Application shutdown complete" in flow.log()
    row = await settled(sb, tid, spool, statuses=("failed", "completed"))
    assert row["status"] == "completed"
    rows = await call_ledger(sb, tid)
    result = tally("SIGTERM mid-call", vendor, rows)
    result.report()
    assert (result.lost, result.doubled) == (0, 0), (rows, vendor.served, vendor.speech)


class SwitchableGateway:
    """A gateway in front of the stack's that can be switched down.

    Down, it answers as the outage it plays looks to Flow: with ``postgrest_down``, the
    request goes to the local ``/rest/v1`` gateway (:mod:`flow.localstack.gateway`, the
    real one) in front of a port where no PostgREST listens, which answers 500; else
    (the database down behind PostgREST) 503. ``down_answers`` counts the statuses
    answered while down.
    """

    def __init__(self, upstream: str, *, postgrest_down: bool = False) -> None:
        self.upstream = upstream.rstrip("/")
        self.postgrest_down = postgrest_down
        self.down = False
        self.down_answers: Counter[int] = Counter()
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._gone_runner: web.AppRunner | None = None
        self._gone_url = ""
        self._no_postgrest: socket.socket | None = None
        self._session: ClientSession | None = None

    @property
    def refused(self) -> int:
        return sum(self.down_answers.values())

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        down = self.down
        if down and not self.postgrest_down:
            self.down_answers[503] += 1
            return web.Response(status=503, text="upstream unavailable")
        answer = await self._forward(request, self._gone_url if down else self.upstream)
        if down:
            self.down_answers[answer.status] += 1
        return answer

    async def _forward(self, request: web.Request, upstream: str) -> web.Response:
        assert self._session is not None
        async with self._session.request(
            request.method,
            f"{upstream}{request.rel_url}",
            headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
            data=await request.read() or None,
        ) as resp:
            body = await resp.read()
            headers = {
                k: v
                for k, v in resp.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "content-encoding")
            }
            return web.Response(status=resp.status, body=body, headers=headers)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[SwitchableGateway]:
        self._session = ClientSession(auto_decompress=True)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._proxy)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        port = localstack.free_port(None)
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        try:
            if self.postgrest_down:
                await self._start_gone_gateway()
            yield self
        finally:
            await self._runner.cleanup()
            if self._gone_runner is not None:
                await self._gone_runner.cleanup()
            await self._session.close()
            if self._no_postgrest is not None:
                self._no_postgrest.close()

    async def _start_gone_gateway(self) -> None:
        """The real gateway, in front of a port bound (so nobody else takes it) where
        nothing listens: its PostgREST is gone."""
        self._no_postgrest = socket.socket()
        self._no_postgrest.bind(("127.0.0.1", 0))
        upstream_port = self._no_postgrest.getsockname()[1]
        self._gone_runner = web.AppRunner(build_app(f"http://127.0.0.1:{upstream_port}"))
        await self._gone_runner.setup()
        site = web.TCPSite(self._gone_runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self._gone_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "name, down_after, down_for",
    [
        ("database down mid-call", 0.8, 2.0),
        ("database down at call end", None, 3.0),
        # As the local gateway answers it: 500.
        ("PostgREST down for the whole call", 0.0, None),
    ],
)
async def test_database_faults_lose_and_double_nothing(
    stack: localstack.StackInfo,
    sb: AsyncClient,
    api_key: dict[str, Any],
    vendor: FakeOpenAI,
    tmp_path: Path,
    name: str,
    down_after: float | None,
    down_for: float | None,
) -> None:
    from flow.bot.runner import create_runner
    from flow.db.client import create_client
    from tests.bot.helpers import FakeVoices, bot_settings, request_for

    gateway = SwitchableGateway(stack.supabase_url, postgrest_down=name.startswith("PostgREST"))
    async with gateway.running():
        s = bot_settings(stack_settings(), vendor.base_url, tmp_path).model_copy(
            update={"supabase_url": gateway.url, "flow_meter_flush_seconds": 0.2}
        )
        flaky = await create_client(s)
        thread = await threads_repo.create_thread(
            sb, api_key_id=api_key["id"], transport="simulated", script=SCRIPT[:2]
        )
        tid = str(thread["workflow_thread_id"])
        metered: list[str] = []
        runner = create_runner(
            s,
            flaky,
            listeners=[lambda event: metered.append(str(event.id))],
            services_factory=FakeVoices(),
            housekeeping_seconds=0.5,
        )
        try:
            if down_after == 0.0:
                gateway.down = True
            await runner.submit(request_for(thread, SCRIPT[:2]))
            if down_after:
                await asyncio.sleep(down_after)
                gateway.down = True
            if down_for is not None and down_after is None:
                # At the end: down from the last reply until after the call is over.
                await until(lambda: sum(1 for x in vendor.served if x.usage_sent) >= 2)
                gateway.down = True
            if down_for is not None:
                await asyncio.sleep(down_for)
                gateway.down = False
            await asyncio.wait_for(runner.wait(tid), 60)
            gateway.down = False
            await replay_spool(sb, s.flow_spool_dir)
            async with asyncio.timeout(20):  # what the instance's next beat does
                while runner.writes.unsettled:
                    await runner.writes.settle()
                    await asyncio.sleep(0.2)
        finally:
            await runner.shutdown()
    assert gateway.refused > 0, "the fault happened"
    assert set(gateway.down_answers) == {500 if gateway.postgrest_down else 503}
    row = await threads_repo.get_thread(sb, tid)
    assert row is not None
    # Down for the whole call: its end is written once the database is back.
    expected = ("completed", None) if down_for else ("failed", "database_unavailable")
    assert (row["status"], row["error_code"]) == expected
    assert row["transcript"], ("the transcript was saved", row)
    rows = await call_ledger(sb, tid)
    in_ledger = {r["id"] for r in rows}
    llm = [r for r in rows if r["kind"] == "llm"]
    result = Tally(
        name,
        metered=len(metered),
        in_ledger=len(rows),
        lost=len(set(metered) - in_ledger),
        doubled=len(in_ledger - set(metered)) + max(0, len(llm) - len(vendor.served)),
    )
    result.report()
    assert metered and (result.lost, result.doubled) == (0, 0)
    assert row["usage_stats"]["events"] == len(rows)


def stack_settings() -> Any:
    from flow.config import get_settings

    return get_settings()
