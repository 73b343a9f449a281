"""API latency: ``GET /api/usage`` over 1,000,000 ledger rows for one key, and
authenticated ``GET /api/bot/{id}`` with the auth cache on versus off, side by side.

One run brings up its own local stack, seeds the ledger in bulk with SQL
(``generate_series``, 10,000 calls x 100 events over the last 29 days, the last call
ending a few minutes ago, none in the future; one LLM model per call; the rollup
trigger sees the same statement a batch of ``record_usage_events`` would), then serves
the real app with uvicorn in separate processes and drives it over HTTP:

- ``/api/usage`` (30 days, grouped by day and by model, and totals), local key;
- ``/api/dashboard`` (30 days: every chart's figures, latency percentiles, top calls);
  the same report computed straight over the ledger (no rollup) in SQL is the baseline;
- ``/api/bot/{id}`` with an Unkey key verified by the real ``unkey.py`` SDK against a
  local fake Unkey (its own process), cache TTL 10 s versus 0; and with a local key
  (checked in the database on every request, by design).

Rounds alternate between servers so machine noise hits them alike. A real Unkey is a
network hop away (tens of ms), so the fake understates what the cache saves.
Run: ``.venv/bin/python bench/api.py`` (``--events 100000`` for a quick run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.processes import free_port, process
from flow import localstack
from flow.db.keys import hash_key, new_key_secret

UNKEY_ROOT = "unkey_root_bench"
UNKEY_KEY = "uk_bench_0123456789abcdef"
UNKEY_KEY_ID = "key_bench"


# --- processes the bench starts ------------------------------------------------
class IdleRunner:
    """A runner that holds no calls: the bench reads, it never joins."""

    def has_capacity(self) -> bool:
        return True

    async def submit(self, call: object) -> None:
        raise RuntimeError("the benchmark does not join calls")

    async def stop(self, workflow_thread_id: str) -> bool:
        return False

    async def shutdown(self) -> None:
        return None


def serve(port: int) -> None:
    """Serve the real app (settings from the environment) on ``port``."""
    import uvicorn

    from flow.config import Settings
    from flow.main import create_app

    app = create_app(Settings(), IdleRunner())
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def fake_unkey(port: int) -> None:
    """The tests' fake Unkey, answering for one key."""
    from tests.fakes.unkey_server import FakeUnkey

    fake = FakeUnkey(root_key=UNKEY_ROOT)
    fake.port = port
    fake.add_key(UNKEY_KEY, key_id=UNKEY_KEY_ID, name="bench unkey key")
    fake.start()
    while True:
        time.sleep(3600)


# --- seeding ---------------------------------------------------------------------
def seed(info: localstack.StackInfo, events: int) -> tuple[str, str, str, str]:
    """A local key with ``events`` ledger rows; returns (plaintext, its thread, the Unkey
    key's thread, the key id)."""
    plaintext = new_key_secret()
    key_id = str(uuid.uuid4())
    unkey_row = str(uuid.uuid4())
    per_call = 100
    calls = max(1, events // per_call)
    sql = f"""
    insert into api_keys (id, name, key_hash, key_prefix)
      values ('{key_id}', 'bench', '{hash_key(plaintext)}', 'flow_sk_bench');
    insert into api_keys (id, name, unkey_key_id)
      values ('{unkey_row}', 'bench unkey', '{UNKEY_KEY_ID}');
    insert into workflow_threads (api_key_id, transport, status, end_user_id, created_at)
      select '{key_id}', 'simulated', 'completed', 'user-' || (g % 500),
             now() - interval '29 days 10 minutes' + (g::float / {calls}) * interval '29 days'
      from generate_series(1, {calls}) g;
    insert into workflow_threads (api_key_id, transport, status)
      values ('{unkey_row}', 'simulated', 'running');
    insert into usage_events (
      id, workflow_thread_id, api_key_id, end_user_id, occurred_at, kind, category, provider,
      model, input_tokens, output_tokens, cache_read_tokens, characters, audio_seconds,
      cost_usd, latency_ms, is_error)
    select gen_random_uuid(), t.workflow_thread_id, t.api_key_id, t.end_user_id,
      t.created_at + e * interval '3 seconds',
      k.kind,
      case when e > 95 and k.kind = 'llm' then 'insights' else 'bot' end,
      case k.kind when 'stt' then 'deepgram' else 'openai' end,
      case k.kind when 'llm' then (array['gpt-4o-mini', 'gpt-4.1', 'gpt-4o'])[1 + t.n % 3]
                  when 'tts' then 'tts-1' else 'nova-3' end,
      case when k.kind = 'llm' then 800 + e * 13 else 0 end,
      case when k.kind = 'llm' then 40 + e else 0 end,
      case when k.kind = 'llm' then e * 7 else 0 end,
      case when k.kind = 'tts' then 60 + e else 0 end,
      case when k.kind = 'stt' then (e % 17) * 0.731 else 0 end,
      case when e % 50 = 7 then null else (e * 0.0000137)::numeric(20, 10) end,
      case when k.kind = 'llm' then 250 + (e % 40) * 11.5 else null end,
      e % 97 = 0
    from (select *, row_number() over () as n from workflow_threads
          where api_key_id = '{key_id}') t
    cross join generate_series(1, {per_call}) e
    cross join lateral (select (array['llm', 'llm', 'tts', 'stt'])[1 + e % 4] as kind) k;
    """
    localstack.psql(info, "-c", sql)
    for table in ("usage_events", "usage_rollup_hourly", "workflow_threads"):
        localstack.psql(info, "-c", f"vacuum analyze {table}")
    thread = localstack.psql(
        info,
        "-At",
        "-c",
        f"select workflow_thread_id from workflow_threads where api_key_id = '{key_id}' limit 1",
    ).strip()
    unkey_thread = localstack.psql(
        info,
        "-At",
        "-c",
        f"select workflow_thread_id from workflow_threads where api_key_id = '{unkey_row}'",
    ).strip()
    return plaintext, thread, unkey_thread, key_id


# --- load ------------------------------------------------------------------------
async def drive(
    url: str, headers: dict[str, str], requests: int, concurrency: int
) -> dict[str, float]:
    latencies_ms: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        for _ in range(5):  # warm connections and caches
            (await client.get(url, headers=headers)).raise_for_status()
        remaining = requests

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter()
                res = await client.get(url, headers=headers)
                latencies_ms.append((time.perf_counter() - t0) * 1000)
                res.raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    latencies_ms.sort()
    return {
        "rps": len(latencies_ms) / wall,
        "p50_ms": statistics.median(latencies_ms),
        "p99_ms": latencies_ms[min(len(latencies_ms) - 1, int(len(latencies_ms) * 0.99))],
    }


def merge(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}


def raw_report_ms(info: localstack.StackInfo, key_id: str, runs: int = 5) -> float:
    """The report's totals straight over the ledger (what the rollup avoids), in SQL."""
    sql = f"""
    explain (analyze, timing off, summary on)
    select count(distinct workflow_thread_id), count(distinct end_user_id), count(*),
      count(*) filter (where kind = 'llm'), sum(input_tokens), sum(output_tokens),
      sum(cache_read_tokens), sum(characters) filter (where kind = 'tts'),
      sum(audio_seconds) filter (where kind = 'stt'), sum(cost_usd),
      count(*) filter (where cost_usd is null), avg(latency_ms) filter (where kind = 'llm'),
      count(*) filter (where is_error)
    from usage_events
    where api_key_id = '{key_id}' and occurred_at >= now() - interval '30 days'
      and occurred_at < now()
    """
    times = []
    for _ in range(runs):
        out = localstack.psql(info, "-At", "-c", sql)
        line = next(x for x in out.splitlines() if x.startswith("Execution Time"))
        times.append(float(line.split(":")[1].split()[0]))
    return statistics.median(times)


def fmt(name: str, r: dict[str, float]) -> str:
    return (
        f"  {name:<44} {r['rps']:>8.1f} req/s"
        f"   p50 {r['p50_ms']:>7.2f} ms   p99 {r['p99_ms']:>7.2f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    f = sub.add_parser("fake-unkey")
    f.add_argument("--port", type=int, required=True)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.port)
        return 0
    if args.command == "fake-unkey":
        fake_unkey(args.port)
        return 0

    state = Path(tempfile.mkdtemp(prefix="flow-bench-api-"))
    info = localstack.up(state, fixed_ports=False, quiet=True)
    try:
        t0 = time.perf_counter()
        plaintext, thread, unkey_thread, key_id = seed(info, args.events)
        rows = localstack.psql(info, "-At", "-c", "select count(*) from usage_events").strip()
        rollup = localstack.psql(
            info, "-At", "-c", "select count(*) from usage_rollup_hourly"
        ).strip()
        print(
            f"seeded {rows} usage_events ({rollup} rollup rows) in {time.perf_counter() - t0:.1f}s"
        )

        base_env = {
            **os.environ,
            **info.env(),
            "FLOW_ENV": "test",
            "FLOW_LOG_LEVEL": "WARNING",
            "FLOW_SYNC_ENABLED": "false",
            "UNKEY_ROOT_KEY": "",
            "POSTHOG_API_KEY": "",
        }
        unkey_port, local_port, cached_port, uncached_port = (free_port() for _ in range(4))
        unkey_env = {
            **base_env,
            "UNKEY_ROOT_KEY": UNKEY_ROOT,
            "UNKEY_BASE_URL": f"http://127.0.0.1:{unkey_port}",
        }
        local_key = {"Authorization": f"Bearer {plaintext}"}
        unkey_key = {"Authorization": f"Bearer {UNKEY_KEY}"}
        with contextlib.ExitStack() as stack:
            stack.enter_context(
                process([__file__, "fake-unkey", "--port", str(unkey_port)], base_env, None)
            )
            stack.enter_context(
                process(
                    [__file__, "serve", "--port", str(local_port)],
                    base_env,
                    f"http://127.0.0.1:{local_port}/health",
                )
            )
            stack.enter_context(
                process(
                    [__file__, "serve", "--port", str(cached_port)],
                    {**unkey_env, "FLOW_AUTH_CACHE_TTL_SECONDS": "10"},
                    f"http://127.0.0.1:{cached_port}/health",
                )
            )
            stack.enter_context(
                process(
                    [__file__, "serve", "--port", str(uncached_port)],
                    {**unkey_env, "FLOW_AUTH_CACHE_TTL_SECONDS": "0"},
                    f"http://127.0.0.1:{uncached_port}/health",
                )
            )
            scenarios = {
                "GET /api/usage (30 days, totals)": (
                    f"http://127.0.0.1:{local_port}/api/usage",
                    local_key,
                ),
                "GET /api/usage?group_by=day": (
                    f"http://127.0.0.1:{local_port}/api/usage?group_by=day",
                    local_key,
                ),
                "GET /api/usage?group_by=model": (
                    f"http://127.0.0.1:{local_port}/api/usage?group_by=model",
                    local_key,
                ),
                "GET /api/dashboard (30 days)": (
                    f"http://127.0.0.1:{local_port}/api/dashboard?days=30",
                    local_key,
                ),
                "GET /api/bot/{id}  unkey, cache on (10 s)": (
                    f"http://127.0.0.1:{cached_port}/api/bot/{unkey_thread}",
                    unkey_key,
                ),
                "GET /api/bot/{id}  unkey, cache off": (
                    f"http://127.0.0.1:{uncached_port}/api/bot/{unkey_thread}",
                    unkey_key,
                ),
                "GET /api/bot/{id}  local key (db check)": (
                    f"http://127.0.0.1:{local_port}/api/bot/{thread}",
                    local_key,
                ),
            }
            results: dict[str, list[dict[str, float]]] = {name: [] for name in scenarios}
            # Latency of one request at a time (no queueing behind the others).
            single: dict[str, list[dict[str, float]]] = {
                name: [] for name in scenarios if name.startswith("GET /api/usage")
            }
            for _ in range(args.rounds):
                for name, (url, headers) in scenarios.items():
                    results[name].append(
                        asyncio.run(drive(url, headers, args.requests, args.concurrency))
                    )
                    if name in single:
                        single[name].append(
                            asyncio.run(drive(url, headers, max(20, args.requests // 4), 1))
                        )
        merged = {name: merge(r) for name, r in results.items()}
        merged_single = {name: merge(r) for name, r in single.items()}
        raw_ms = raw_report_ms(info, key_id)

        print(
            f"\n{args.rounds} rounds x {args.requests} requests, concurrency {args.concurrency}, "
            f"median of rounds:"
        )
        for name, r in merged.items():
            print(fmt(name, r))
        print("one request at a time (concurrency 1):")
        for name, r in merged_single.items():
            print(fmt(name, r))
        usage_p50 = merged["GET /api/usage?group_by=day"]["p50_ms"]
        single_p50 = merged_single["GET /api/usage?group_by=day"]["p50_ms"]
        on = merged["GET /api/bot/{id}  unkey, cache on (10 s)"]
        off = merged["GET /api/bot/{id}  unkey, cache off"]
        print(
            f"\nbaseline: the same totals straight over the ledger in SQL: {raw_ms:.1f} ms "
            f"(execution only) vs usage endpoint p50 {usage_p50:.1f} ms end to end "
            f"-> {raw_ms / usage_p50:.1f}x"
        )
        print(
            f"auth cache on/off: {on['rps'] / off['rps']:.2f}x req/s, "
            f"p50 {off['p50_ms'] / on['p50_ms']:.2f}x lower"
        )
        for label, p50 in (
            ("one request at a time", single_p50),
            (f"concurrency {args.concurrency}", usage_p50),
        ):
            target = "met" if p50 < 100 else "MISSED"
            print(
                f"target usage p50 < 100 ms at {rows} rows ({label}, group_by=day): "
                f"{target} ({p50:.1f} ms)"
            )
    finally:
        localstack.destroy(state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
