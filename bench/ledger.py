"""Ledger throughput: events/s recorded through ``record_usage_events`` in batches of
100 and 1000, versus the naive path (insert the event, read ``usage_stats``, add in
Python, write the row back), measured side by side in one run on one local stack.

Rounds alternate between the approaches so machine noise hits all of them alike; the
median of the rounds is reported. Run: ``.venv/bin/python bench/ledger.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from supabase import AsyncClient, acreate_client

from flow import localstack
from flow.db import keys, threads
from flow.db.client import call, loads_exact
from flow.db.usage import record_usage_events
from flow.metering.events import UsageEvent, UsageKind
from flow.metering.pricing import PriceBook

BOOK = PriceBook()


def make_events(thread: dict[str, Any], n: int) -> list[UsageEvent]:
    out = []
    for _ in range(n):
        i, o = random.randint(100, 4000), random.randint(1, 400)
        c = random.randint(0, i)
        price = BOOK.llm(
            "openai", "gpt-4o-mini", input_tokens=i, output_tokens=o, cache_read_tokens=c
        )
        out.append(
            UsageEvent(
                workflow_thread_id=thread["workflow_thread_id"],
                api_key_id=thread["api_key_id"],
                kind=UsageKind.LLM,
                provider="openai",
                model="gpt-4o-mini",
                input_tokens=i,
                output_tokens=o,
                cache_read_tokens=c,
                cost_usd=price.total_cost_usd if price else None,
            )
        )
    return out


async def naive(sb: AsyncClient, events: list[UsageEvent]) -> None:
    """What the ledger replaces: a read-modify-write of the row per event."""
    for e in events:
        await call(sb.table("usage_events").insert(e.to_row()).execute)
        res: Any = await call(
            sb.table("workflow_threads")
            .select("stats:usage_stats::text")
            .eq("workflow_thread_id", str(e.workflow_thread_id))
            .execute
        )
        stats = loads_exact(res.data[0]["stats"]) or {}
        stats["llm_calls"] = stats.get("llm_calls", 0) + 1
        stats["input_tokens"] = stats.get("input_tokens", 0) + e.input_tokens
        stats["output_tokens"] = stats.get("output_tokens", 0) + e.output_tokens
        stats["total_tokens"] = stats.get("total_tokens", 0) + e.total_tokens
        stats["total_cost_usd"] = str(
            Decimal(str(stats.get("total_cost_usd", 0))) + (e.cost_usd or 0)
        )
        await call(
            sb.table("workflow_threads")
            .update({"usage_stats": json.loads(json.dumps(stats, default=str))})
            .eq("workflow_thread_id", str(e.workflow_thread_id))
            .execute
        )


async def batched(sb: AsyncClient, events: list[UsageEvent], size: int) -> None:
    for start in range(0, len(events), size):
        await record_usage_events(sb, events[start : start + size])


async def main(rounds: int, naive_events: int, batch_events: int) -> None:
    state = Path(tempfile.mkdtemp(prefix="flow-bench-ledger-"))
    info = localstack.up(state, fixed_ports=False, quiet=True)
    try:
        sb = await acreate_client(info.supabase_url, info.service_role_key)
        key, _ = await keys.create_local_key(sb, "bench")
        results: dict[str, list[float]] = {"naive": [], "rpc x100": [], "rpc x1000": []}
        for _ in range(rounds):
            plan = [
                ("naive", naive_events, None),
                ("rpc x100", batch_events, 100),
                ("rpc x1000", batch_events, 1000),
            ]
            random.shuffle(plan)
            for name, n, size in plan:
                thread = await threads.create_thread(
                    sb, api_key_id=key["id"], transport="simulated"
                )
                events = make_events(thread, n)
                t0 = time.perf_counter()
                if size is None:
                    await naive(sb, events)
                else:
                    await batched(sb, events, size)
                results[name].append(n / (time.perf_counter() - t0))
        med = {k: statistics.median(v) for k, v in results.items()}
        print(f"ledger benchmark ({rounds} rounds, median events/s, local stack)")
        for name, rate in med.items():
            print(f"  {name:<10} {rate:>10,.0f} events/s")
        print(f"  ratio rpc x100  / naive: {med['rpc x100'] / med['naive']:.1f}x")
        print(f"  ratio rpc x1000 / naive: {med['rpc x1000'] / med['naive']:.1f}x")
    finally:
        localstack.destroy(state)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--naive-events", type=int, default=300)
    parser.add_argument("--batch-events", type=int, default=10_000)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.naive_events, args.batch_events))
