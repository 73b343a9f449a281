"""Who-to-bill reports: ``GET /api/usage`` for every grouping over one key's ledger, the
operator's ``GET /api/admin/usage`` over many keys, and the billing CSV, side by side
with baselines in one run.

One run brings up its own local stack and seeds it in SQL (``bench/api.py``'s seeding:
``--events`` rows for one key, 100 per call over 29 days; then ``--keys`` keys with
``--key-events`` rows each), then serves the real app with uvicorn in a process of its
own and drives it over HTTP:

- ``/api/usage`` (30 days) with no grouping and by day, model, category, kind and end
  user, ``--concurrency`` requests at a time; side by side in SQL, each grouping by the
  ``usage_report`` of before the dimensions rollup (installed as
  ``usage_report_before``) and by today's. Target: p50 < 100 ms for every grouping.
- ``/api/admin/usage`` (every key, 30 days) with an operator token; the baseline is
  what ``flow usage`` does, the key list then one ``usage_report`` per key, through
  supabase-py. Target: p50 < 100 ms. Side by side in SQL: ``usage_keys_report`` with
  the range's closed days kept, keeping them, and with nothing kept.
- ``/api/usage/export.csv?group_by=day`` with the operator token (every key and day):
  throughput (ledger rows covered per second, CSV rows per second) and the server's
  peak RSS before and after (constant memory: the export is streamed a page of keys at
  a time), against the same CSV built whole in memory (``tracemalloc`` peak of both in
  this process).

Run: ``.venv/bin/python bench/reports.py`` (defaults: 1,000,000 rows and 1,000 keys);
``--events 100000 --keys 100`` for a quick run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import api as api_bench  # noqa: E402  (bench/api.py: seeding, load, the app's process)

from bench.processes import free_port, process  # noqa: E402
from flow import localstack  # noqa: E402
from flow.db.keys import hash_key  # noqa: E402

GROUPINGS = [None, "day", "model", "category", "kind", "end_user"]
KEYS_PER_STATEMENT = 100


def seed_keys(info: localstack.StackInfo, keys: int, per_key: int) -> None:
    """``keys`` keys with ``per_key`` ledger rows each (20 per call, over 29 days, each
    key's last call a few minutes ago: every key was busy this hour)."""
    calls = max(1, per_key // 20)
    sql = f"""
    insert into api_keys (name, key_hash, key_prefix)
      select 'customer ' || g, md5(g::text) || md5('k' || g::text), 'flow_sk_c' || g
      from generate_series(1, {keys}) g;
    insert into workflow_threads (api_key_id, transport, status, end_user_id, created_at,
                                  bot_started_at, bot_ended_at)
      select k.id, 'simulated', 'completed', 'user-' || (c % 7),
             now() - interval '29 days 10 minutes' + (c::float / {calls}) * interval '29 days',
             now() - interval '29 days 10 minutes' + (c::float / {calls}) * interval '29 days',
             now() - interval '29 days 10 minutes' + (c::float / {calls}) * interval '29 days'
               + interval '90 seconds'
      from api_keys k cross join generate_series(1, {calls}) c
      where k.key_prefix like 'flow_sk_c%';
    """
    localstack.psql(info, "-c", sql)
    # A batch of keys a statement: the ledger's triggers take an advisory lock per key
    # (and per key and day) they write, and the lock table is bounded.
    for first in range(1, keys + 1, KEYS_PER_STATEMENT):
        last = min(keys, first + KEYS_PER_STATEMENT - 1)
        localstack.psql(info, "-c", events_sql(first, last))


def events_sql(first: int, last: int) -> str:
    """The ledger rows of the seeded keys ``first`` to ``last``."""
    return f"""
    insert into usage_events (id, workflow_thread_id, api_key_id, end_user_id, occurred_at,
      kind, category, provider, model, input_tokens, output_tokens, characters,
      audio_seconds, cost_usd, latency_ms)
    select gen_random_uuid(), t.workflow_thread_id, t.api_key_id, t.end_user_id,
      t.created_at + e * interval '4 seconds', k.kind, 'bot',
      case k.kind when 'stt' then 'deepgram' else 'openai' end,
      case k.kind when 'llm' then 'gpt-4o-mini' when 'tts' then 'tts-1' else 'nova-3' end,
      case when k.kind = 'llm' then 900 + e else 0 end,
      case when k.kind = 'llm' then 60 else 0 end,
      case when k.kind = 'tts' then 80 + e else 0 end,
      case when k.kind = 'stt' then 1.5 else 0 end,
      (e * 0.0000173)::numeric(20, 10),
      case when k.kind = 'llm' then 300 else null end
    from workflow_threads t
    join api_keys a on a.id = t.api_key_id and a.key_prefix like 'flow_sk_c%'
      and substr(a.key_prefix, 10)::int between {first} and {last}
    cross join generate_series(1, 20) e
    cross join lateral (select (array['llm', 'llm', 'tts', 'stt'])[1 + e % 4] as kind) k;
    """


def install_baseline(info: localstack.StackInfo) -> None:
    """The ``usage_report`` of before the dimensions rollup, as ``usage_report_before``."""
    text = (ROOT / "supabase/migrations/20261128140000_telephony.sql").read_text()
    start = text.index("create or replace function public.usage_report(")
    end = text.index("$$;", text.index("as $$", start) + 5) + 3
    body = text[start:end].replace("public.usage_report(", "public.usage_report_before(", 1)
    localstack.psql(info, "-c", body)


def sql_ms(info: localstack.StackInfo, sql: str) -> float:
    out = localstack.psql(info, "-At", "-c", f"explain (analyze, timing off, summary on) {sql}")
    line = next(x for x in out.splitlines() if x.startswith("Execution Time"))
    return float(line.split(":")[1].split()[0])


def keys_report_sql(use_cache: bool) -> str:
    return f"select usage_keys_report(now() - interval '30 days', now(), {use_cache})"


def report_sql(function: str, key_id: str, group_by: str | None) -> str:
    grouping = "null" if group_by is None else f"'{group_by}'"
    return f"select {function}('{key_id}', now() - interval '30 days', now(), {grouping})"


async def per_key_reports_ms(info: localstack.StackInfo) -> float:
    """What ``flow usage`` does for every key: the key list, then one ``usage_report``
    per key, through supabase-py (ms, end to end)."""
    from flow.config import Settings
    from flow.db import keys, usage
    from flow.db.client import create_client

    sb = await create_client(
        Settings(supabase_url=info.supabase_url, supabase_service_role_key=info.service_role_key)
    )
    end = datetime.now(UTC)
    start = end - timedelta(days=30)
    t0 = time.perf_counter()
    for row in await keys.list_keys(sb):
        await usage.usage_report(sb, str(row["id"]), start, end)
    return (time.perf_counter() - t0) * 1000


def peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(found.group(1)) if found else 0


async def stream_csv(url: str, headers: dict[str, str]) -> tuple[int, int, float]:
    """(bytes, lines, seconds) of one streamed CSV download."""
    size = lines = 0
    t0 = time.perf_counter()
    async with (
        httpx.AsyncClient(timeout=600) as client,
        client.stream("GET", url, headers=headers) as res,
    ):
        res.raise_for_status()
        async for chunk in res.aiter_bytes():
            size += len(chunk)
            lines += chunk.count(b"\n")
    return size, lines, time.perf_counter() - t0


async def csv_in_memory_peaks(info: localstack.StackInfo) -> tuple[int, int, int]:
    """tracemalloc peaks (bytes) of the streamed CSV and of the same CSV built whole,
    in this process, and the CSV's lines."""
    from flow.billing.csv_export import csv_lines
    from flow.config import Settings
    from flow.db.client import create_client

    settings = Settings(
        supabase_url=info.supabase_url, supabase_service_role_key=info.service_role_key
    )
    sb = await create_client(settings)
    end = datetime.now(UTC)
    start = end - timedelta(days=30)
    tracemalloc.start()
    lines = 0
    async for _line in csv_lines(sb, start, end, "day"):
        lines += 1
    streamed = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    whole = [line async for line in csv_lines(sb, start, end, "day")]
    text = "".join(whole)
    built = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del text, whole
    return streamed, built, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--key-events", type=int, default=200)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)

    state = Path(tempfile.mkdtemp(prefix="flow-bench-reports-"))
    info = localstack.up(state, fixed_ports=False, quiet=True)
    try:
        t0 = time.perf_counter()
        plaintext, _, _, key_id = api_bench.seed(info, args.events)
        seed_keys(info, args.keys, args.key_events)
        for table in (
            "usage_events",
            "usage_rollup_hourly",
            "usage_rollup_call_hourly",
            "usage_rollup_dims_hourly",
            "workflow_threads",
            "api_keys",
        ):
            localstack.psql(info, "-c", f"vacuum analyze {table}")
        install_baseline(info)
        token = "flow_op_bench" + uuid.uuid4().hex
        localstack.psql(
            info,
            "-c",
            "insert into operator_tokens (name, token_hash, token_prefix) "
            f"values ('bench', '{hash_key(token)}', 'flow_op_bench')",
        )
        rows = int(localstack.psql(info, "-At", "-c", "select count(*) from usage_events"))
        print(
            f"seeded {rows:,} ledger rows, {args.keys + 2} keys in {time.perf_counter() - t0:.0f}s"
        )

        env = {
            **os.environ,
            **info.env(),
            "FLOW_ENV": "test",
            "FLOW_LOG_LEVEL": "WARNING",
            "FLOW_SYNC_ENABLED": "false",
            "UNKEY_ROOT_KEY": "",
            "POSTHOG_API_KEY": "",
        }
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        serve = [str(ROOT / "bench" / "api.py"), "serve", "--port", str(port)]
        with process(serve, env, f"{base}/health") as server:
            key = {"Authorization": f"Bearer {plaintext}"}
            ops = {"Authorization": f"Bearer {token}"}
            scenarios: dict[str, tuple[str, dict[str, str]]] = {}
            for g in GROUPINGS:
                suffix = f"?group_by={g}" if g else ""
                scenarios[f"GET /api/usage{suffix or ' (totals)'}"] = (
                    f"{base}/api/usage{suffix}",
                    key,
                )
            scenarios[f"GET /api/admin/usage ({args.keys + 2} keys)"] = (
                f"{base}/api/admin/usage",
                ops,
            )
            results: dict[str, list[dict[str, float]]] = {n: [] for n in scenarios}
            keys_sql: dict[str, list[float]] = {"first": [], "kept": [], "none": []}
            before: dict[str, list[float]] = {str(g): [] for g in GROUPINGS}
            after: dict[str, list[float]] = {str(g): [] for g in GROUPINGS}
            for _ in range(args.rounds):
                for name, (url, headers) in scenarios.items():
                    results[name].append(
                        asyncio.run(api_bench.drive(url, headers, args.requests, args.concurrency))
                    )
                for g in GROUPINGS:  # SQL alone, old and new interleaved
                    before[str(g)].append(
                        sql_ms(info, report_sql("usage_report_before", key_id, g))
                    )
                    after[str(g)].append(sql_ms(info, report_sql("usage_report", key_id, g)))
                # Every key's report in SQL: the first over its days (keeping them), the
                # next (reading what was kept), and with nothing kept.
                localstack.psql(info, "-c", "delete from usage_report_cache")
                keys_sql["first"].append(sql_ms(info, keys_report_sql(True)))
                keys_sql["kept"].append(sql_ms(info, keys_report_sql(True)))
                keys_sql["none"].append(sql_ms(info, keys_report_sql(False)))
            per_key = asyncio.run(per_key_reports_ms(info))

            rss_before = peak_rss_kib(server.pid)
            size, lines, seconds = asyncio.run(
                stream_csv(f"{base}/api/usage/export.csv?group_by=day", ops)
            )
            rss_after = peak_rss_kib(server.pid)
            streamed, built, _ = asyncio.run(csv_in_memory_peaks(info))

        print(
            f"\n{args.rounds} rounds x {args.requests} requests, concurrency "
            f"{args.concurrency}, median of rounds:"
        )
        for name, r in results.items():
            p50 = statistics.median(x["p50_ms"] for x in r)
            verdict = "met" if p50 < 100 else "MISSED"
            print(api_bench.fmt(name, api_bench.merge(r)) + f"   target p50 < 100 ms: {verdict}")
        print("usage_report in SQL alone, before the dimensions rollup vs now (median ms):")
        for g in GROUPINGS:
            old, new = statistics.median(before[str(g)]), statistics.median(after[str(g)])
            print(f"  group_by={g!s:<9} before {old:>8.1f}   now {new:>8.1f}   {old / new:>5.1f}x")
        first, kept, none = (statistics.median(keys_sql[k]) for k in ("first", "kept", "none"))
        print(
            f"usage_keys_report in SQL alone (median ms): with its closed days kept {kept:.1f}, "
            f"keeping them (the first report over them) {first:.1f}, nothing kept {none:.1f} "
            f"-> {none / kept:.1f}x"
        )
        admin = statistics.median(
            x["p50_ms"] for x in results[f"GET /api/admin/usage ({args.keys + 2} keys)"]
        )
        print(
            f"every key's report: one usage_report per key, as flow usage does, {per_key:.0f} ms "
            f"vs GET /api/admin/usage p50 {admin:.1f} ms, both end to end -> "
            f"{per_key / admin:.1f}x"
        )
        print(
            f"CSV by day, every key: {lines - 1:,} rows, {size / 1e6:.1f} MB in {seconds:.2f}s "
            f"({rows / seconds:,.0f} ledger rows/s, {(lines - 1) / seconds:,.0f} CSV rows/s); "
            f"server peak RSS {rss_before / 1024:.0f} MiB before, {rss_after / 1024:.0f} MiB "
            f"after"
        )
        print(
            f"CSV in this process: streamed peak {streamed / 1024:.0f} KiB vs built whole "
            f"{built / 1024:.0f} KiB ({built / max(streamed, 1):.1f}x)"
        )
    finally:
        localstack.destroy(state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
