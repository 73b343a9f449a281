"""What keeping the all-keys report's closed days costs the ledger's writes: events/s
through ``record_usage_events`` in batches of 100 with the write side of it (the
statement trigger that forgets kept spans, the btree on ``occurred_at``, the rollups'
``bucket_hour`` indexes) and without it (trigger disabled, those indexes dropped, the
BRIN on ``occurred_at`` they replaced put back), rounds interleaved in random order on
one local stack; medians.

Run: ``.venv/bin/python bench/ledger_report_cost.py [--rounds 5] [--events 10000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from supabase import acreate_client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ledger import batched, make_events  # noqa: E402  (bench/ledger.py)

from flow import localstack  # noqa: E402
from flow.db import keys, threads  # noqa: E402

WITHOUT = """
alter table usage_events disable trigger usage_events_report_cache_insert;
drop index usage_events_occurred_idx;
drop index usage_rollup_call_hourly_hour_idx;
drop index usage_rollup_dims_hourly_hour_idx;
create index usage_events_occurred_brin on usage_events using brin (occurred_at);
"""
WITH = """
alter table usage_events enable trigger usage_events_report_cache_insert;
create index usage_events_occurred_idx on usage_events (occurred_at);
create index usage_rollup_call_hourly_hour_idx on usage_rollup_call_hourly (bucket_hour);
create index usage_rollup_dims_hourly_hour_idx on usage_rollup_dims_hourly (bucket_hour);
drop index usage_events_occurred_brin;
"""


async def main(rounds: int, events: int) -> None:
    state = Path(tempfile.mkdtemp(prefix="flow-bench-ledger-report-"))
    info = localstack.up(state, fixed_ports=False, quiet=True)
    try:
        sb = await acreate_client(info.supabase_url, info.service_role_key)
        key, _ = await keys.create_local_key(sb, "bench")
        rates: dict[str, list[float]] = {"with": [], "without": []}
        for _ in range(rounds):
            plan = list(rates)
            random.shuffle(plan)
            for name in plan:
                if name == "without":
                    localstack.psql(info, "-c", WITHOUT)
                thread = await threads.create_thread(
                    sb, api_key_id=key["id"], transport="simulated"
                )
                batch = make_events(thread, events)
                t0 = time.perf_counter()
                await batched(sb, batch, 100)
                rates[name].append(events / (time.perf_counter() - t0))
                if name == "without":
                    localstack.psql(info, "-c", WITH)
        med = {name: statistics.median(values) for name, values in rates.items()}
        print(f"ledger writes, batches of 100 ({rounds} rounds, median events/s)")
        print(f"  with the report's write side     {med['with']:>8,.0f}")
        print(f"  without it                        {med['without']:>8,.0f}")
        print(f"  ratio with / without: {med['with'] / med['without']:.2f}x")
    finally:
        localstack.destroy(state)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--events", type=int, default=10_000)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.events))
