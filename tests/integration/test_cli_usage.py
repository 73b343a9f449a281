"""`flow usage`: what each key used and owes, from the same SQL report as the API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from decimal import Decimal
from typing import Any

from supabase import AsyncClient

from flow import localstack
from flow.db import keys as keys_repo
from flow.db import threads as threads_repo
from flow.db.usage import record_usage_events
from tests.integration.test_ledger import llm_event, tts_event


def flow_cli(stack: localstack.StackInfo, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **stack.env()}
    return subprocess.run(
        [sys.executable, "-m", "flow.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_flow_usage_reports_each_keys_usage_and_cost(
    stack: localstack.StackInfo, sb: AsyncClient
) -> None:
    name = f"billing-{uuid.uuid4().hex[:8]}"
    row, _ = await keys_repo.create_local_key(sb, name)
    api_key: dict[str, Any] = row
    thread = await threads_repo.create_thread(sb, api_key_id=row["id"], transport="simulated")
    events = [llm_event(thread, model="gpt-4o-mini") for _ in range(4)]
    events += [llm_event(thread, model="gpt-4o") for _ in range(2)]
    events.append(tts_event(thread, 120))
    await record_usage_events(sb, events)
    cost = sum((e.cost_usd or Decimal(0) for e in events), Decimal(0))

    out = flow_cli(stack, "usage", "--key", str(api_key["id"]), "--group-by", "model", "--json")
    assert out.returncode == 0, out.stderr
    [report] = json.loads(out.stdout)["keys"]
    assert report["api_key_id"] == str(api_key["id"])
    assert Decimal(report["totals"]["cost_usd"]) == cost
    assert report["totals"]["calls"] == 1
    assert report["totals"]["llm_calls"] == 6
    assert report["totals"]["tts_characters"] == 120
    by_model = {g["key"]: g for g in report["groups"]}
    assert set(by_model) == {"gpt-4o-mini", "gpt-4o", "tts-1"}
    assert by_model["gpt-4o"]["llm_calls"] == 2

    table = flow_cli(stack, "usage", "--days", "7")
    assert table.returncode == 0, table.stderr
    [line] = [ln for ln in table.stdout.splitlines() if ln.startswith(name)]
    assert Decimal(line.split()[-1]) == cost

    assert flow_cli(stack, "usage", "--key", "no-such-key").returncode == 1
    bad = flow_cli(stack, "usage", "--days", "0")
    assert bad.returncode == 2 and "between 1 and 400" in bad.stderr
