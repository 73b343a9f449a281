"""Budgets: what the check costs a join, and how fast a call over its budget ends.

One run brings up its own local stack and measures, side by side:

- **Join latency with a budget vs without.** Two local keys with the same history this
  month (``--calls`` finished calls of 20 ledger rows each, seeded in SQL), one with a
  budget (limit, alerts, per-call and concurrency limits), one without. The real app
  (``flow serve``'s app under uvicorn, in its own process, with a runner that accepts
  every call) answers ``POST /api/bot/join`` for both, one request at a time,
  alternating between the keys request by request so machine noise hits both alike; the
  calls are marked finished between rounds of ``--joins`` (untimed), so each key holds
  at most that many live calls. Both joins are one SQL statement
  (``admit_call``): the budgeted one also locks the budget row, counts live calls and
  sums the period's spending from the hourly rollup.
- **From the usage that crosses the limit to the call ending.** Real simulated calls
  (the real OpenAI LLM service against the tests' local streaming server, fake STT/TTS)
  run by the real runner with its budget guard: (a) the call's own usage reaches its
  key's limit: from the usage event on which the guard decided to the end of the
  pipeline (the goodbye said); (b) another instance's usage exhausts the key's budget
  in the middle of the call: from that usage's commit to the end of the pipeline
  (the guard reads the budget every ``FLOW_BUDGET_POLL_SECONDS``, 1 s by default).

Run: ``.venv/bin/python bench/budget.py`` (``--rounds 8`` for a quick run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flow import localstack
from flow.db.keys import hash_key, new_key_secret

JOIN = {"transport": "simulated", "script": ["hello"], "process_insights": False}


class AcceptingRunner:
    """A runner that takes every call and runs none: the bench times joins only."""

    def has_capacity(self) -> bool:
        return True

    async def submit(self, call: object) -> None:
        return None

    async def stop(self, workflow_thread_id: str) -> bool:
        return False

    async def shutdown(self) -> None:
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(port: int, env: dict[str, str]) -> Iterator[None]:
    """``serve`` in its own process, until it answers /health."""
    proc = subprocess.Popen([sys.executable, __file__, "serve", "--port", str(port)], env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the app did not start") from None
                time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def serve(port: int) -> None:
    import uvicorn

    from flow.config import Settings
    from flow.main import create_app

    app = create_app(Settings(), AcceptingRunner())  # type: ignore[arg-type]
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# --- join latency ------------------------------------------------------------------
def seed_key(info: localstack.StackInfo, name: str, calls: int, budget: bool) -> str:
    plaintext = new_key_secret()
    key_id = str(uuid.uuid4())
    sql = f"""
    insert into api_keys (id, name, key_hash, key_prefix)
      values ('{key_id}', '{name}', '{hash_key(plaintext)}', 'flow_sk_{name[:6]}');
    insert into workflow_threads (api_key_id, transport, status, created_at)
      select '{key_id}', 'simulated', 'completed',
             date_trunc('month', now(), 'UTC')
               + (g::float / {calls}) * (now() - date_trunc('month', now(), 'UTC'))
      from generate_series(1, {calls}) g;
    insert into usage_events (id, workflow_thread_id, api_key_id, occurred_at, kind,
      provider, model, characters, cost_usd)
    select gen_random_uuid(), t.workflow_thread_id, t.api_key_id,
      t.created_at + e * interval '2 seconds', 'tts', 'openai', 'tts-1', 60,
      case when e = 7 then null else 0.0009 end
    from workflow_threads t cross join generate_series(1, 20) e
    where t.api_key_id = '{key_id}';
    """
    if budget:
        sql += f"""
        insert into api_key_budgets (api_key_id, limit_usd, period, alert_at, max_call_usd,
          max_concurrent_calls)
        values ('{key_id}', 1000000, 'month', '{{0.5,0.8}}', 5, 10000);
        """
    localstack.psql(info, "-c", sql)
    return plaintext


async def joins(url: str, keys: dict[str, str], n: int, times: dict[str, list[float]]) -> None:
    """``n`` joins per key, alternating between the keys request by request."""
    headers = {name: {"Authorization": f"Bearer {key}"} for name, key in keys.items()}
    async with httpx.AsyncClient(timeout=30) as client:
        for name in keys:  # warm the connection
            (await client.post(url, json=JOIN, headers=headers[name])).raise_for_status()
        for i in range(n):
            for name in list(keys)[:: 1 if i % 2 else -1]:
                t0 = time.perf_counter()
                res = await client.post(url, json=JOIN, headers=headers[name])
                times[name].append((time.perf_counter() - t0) * 1000)
                res.raise_for_status()


def join_latency(info: localstack.StackInfo, args: argparse.Namespace) -> tuple[float, float]:
    keys = {
        "plain": seed_key(info, "plain", args.calls, budget=False),
        "budgeted": seed_key(info, "budgeted", args.calls, budget=True),
    }
    localstack.psql(info, "-c", "vacuum analyze")
    port = free_port()
    env = {
        **os.environ,
        **info.env(),
        "FLOW_ENV": "test",
        "FLOW_LOG_LEVEL": "WARNING",
        "FLOW_SYNC_ENABLED": "false",
        "UNKEY_ROOT_KEY": "",
        "POSTHOG_API_KEY": "",
        "OPENAI_API_KEY": "sk-bench",
    }
    url = f"http://127.0.0.1:{port}/api/bot/join"
    times: dict[str, list[float]] = {name: [] for name in keys}
    with serving(port, env):
        for _ in range(args.rounds):
            asyncio.run(joins(url, keys, args.joins, times))
            # The calls end between rounds (untimed): each key holds at most a round's.
            localstack.psql(
                info, "-c", "update workflow_threads set status = 'failed' where status = 'pending'"
            )
    return statistics.median(times["plain"]), statistics.median(times["budgeted"])


# --- the end of a call over its budget --------------------------------------------
@contextlib.contextmanager
def watched() -> Iterator[dict[str, list[float]]]:
    """Time the guard's decision and the end of each call's pipeline."""
    from flow.bot.call_end import CallEnd, RunningCall

    seen: dict[str, list[float]] = {"decided": [], "ended": []}
    over_budget, finish = RunningCall.over_budget, CallEnd.finish

    def decided(self: Any, last_words: str) -> None:
        seen["decided"].append(time.perf_counter())
        over_budget(self, last_words)

    async def ended(self: Any, *a: Any, **kw: Any) -> None:
        seen["ended"].append(time.perf_counter())
        await finish(self, *a, **kw)

    RunningCall.over_budget, CallEnd.finish = decided, ended  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        RunningCall.over_budget, CallEnd.finish = over_budget, finish  # type: ignore[method-assign]


async def ending(info: localstack.StackInfo, rounds: int, spool: Path) -> tuple[float, float]:
    from pydantic import SecretStr

    from flow.bot.contract import BotConfig, CallBudget, CallRequest
    from flow.bot.runner import create_runner
    from flow.bot.simulated import SimulatedParams
    from flow.config import Settings
    from flow.db import budgets
    from flow.db import threads as threads_repo
    from flow.db.client import create_client
    from flow.db.keys import create_local_key
    from flow.db.usage import record_usage_events
    from flow.metering.events import UsageEvent, UsageKind
    from tests.bot.helpers import FakeVoices
    from tests.fakes.openai_server import FakeOpenAI

    server = await FakeOpenAI(replies=["Sure. It is done now."], slow_word_seconds=0.02).start()
    settings = Settings(
        **{k.lower(): v for k, v in info.env().items() if k.startswith("SUPABASE")},
        openai_api_key=SecretStr("sk-bench"),
        openai_base_url=server.base_url,
        flow_spool_dir=spool,
        flow_budget_goodbye="Goodbye.",
    )
    sb = await create_client(settings)
    runner = create_runner(
        settings,
        sb,
        services_factory=FakeVoices(),
        simulated=SimulatedParams(caller_audio_seconds=0.5, reply_patience_seconds=None),
    )

    async def run(limit: Decimal, script: list[str], cross_after: float | None) -> float:
        """One call of a key with a budget of ``limit``; with ``cross_after``, another
        call of the key (on another instance) records usage worth the whole budget that
        many seconds in. Returns when that usage was committed."""
        key, _ = await create_local_key(sb, "bench")
        key_id = str(key["id"])
        await budgets.set_budget(sb, key_id, budgets.Budget(limit_usd=limit))
        tid = str(uuid.uuid4())
        await budgets.admit_call(
            sb, workflow_thread_id=tid, api_key_id=key_id, transport="simulated", script=script
        )
        elsewhere = await threads_repo.create_thread(sb, api_key_id=key_id, transport="simulated")
        await runner.submit(
            CallRequest(
                workflow_thread_id=tid,
                api_key_id=key_id,
                transport="simulated",
                bot_config=BotConfig(),
                script=script,
                budget=CallBudget(key_limited=True),
            )
        )
        crossed = 0.0
        if cross_after is not None:
            await asyncio.sleep(cross_after)
            usage = UsageEvent(
                workflow_thread_id=elsewhere["workflow_thread_id"],
                api_key_id=key_id,
                kind=UsageKind.TTS,
                provider="openai",
                model="tts-1",
                characters=1,
                cost_usd=limit,
            )
            await record_usage_events(sb, [usage])
            crossed = time.perf_counter()
        await runner.wait(tid)
        return crossed

    own, elsewhere = [], []
    with watched() as seen:
        for _ in range(rounds):
            seen["decided"].clear(), seen["ended"].clear()
            await run(Decimal("0.0005"), ["Hello there."] * 4, None)
            own.append(seen["ended"][0] - seen["decided"][0])
            seen["decided"].clear(), seen["ended"].clear()
            crossed = await run(Decimal("1"), [f"Line {n}." for n in range(40)], 1.5)
            elsewhere.append(seen["ended"][0] - crossed)
    await runner.shutdown()
    await server.stop()
    return statistics.median(own) * 1000, statistics.median(elsewhere) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    parser.add_argument("--calls", type=int, default=5000, help="finished calls seeded per key")
    parser.add_argument("--joins", type=int, default=25, help="joins per key per round")
    parser.add_argument("--rounds", type=int, default=24)
    parser.add_argument("--end-rounds", type=int, default=3, help="calls ended per scenario")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.port)
        return 0

    state = Path(tempfile.mkdtemp(prefix="flow-bench-budget-"))
    info = localstack.up(state, fixed_ports=False, quiet=True)
    try:
        plain, budgeted = join_latency(info, args)
        print(f"join p50 over {args.rounds} x {args.joins} joins per key ({args.calls} calls each)")
        print(f"  without a budget   {plain:7.2f} ms")
        print(f"  with a budget      {budgeted:7.2f} ms   {100 * (budgeted / plain - 1):+.1f}%")
        own, elsewhere = asyncio.run(ending(info, args.end_rounds, state / "spool"))
        print("from the usage that ends a call to the end of its pipeline (median)")
        print(f"  its own usage reaches the key's limit        {own:7.0f} ms")
        print(f"  another instance's usage exhausts the budget {elsewhere:7.0f} ms")
    finally:
        localstack.destroy(state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
