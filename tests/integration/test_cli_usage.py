"""`flow usage`: what each key used and owes, from the same SQL report as the API; keys
are named by id, prefix or name in every ``flow`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from supabase import AsyncClient

from flow import localstack
from flow.db import keys as keys_repo
from flow.db import threads as threads_repo
from flow.db.usage import record_usage_events
from tests.integration.test_ledger import llm_event, tts_event

ROOT = Path(__file__).resolve().parents[2]


def flow_cli(
    stack: localstack.StackInfo, *args: str, **settings: str
) -> subprocess.CompletedProcess[str]:
    """``flow ARGS`` on the test stack, running this checkout's ``flow`` package, with
    more ``settings`` in its environment."""
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, **stack.env(), "PYTHONPATH": pythonpath, **settings}
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
    too_long = flow_cli(stack, "usage", "--days", "401")
    assert too_long.returncode == 2 and "between 1 and 400" in too_long.stderr

    # The same key by name and by its printed prefix.
    for ident in (name, row["key_prefix"]):
        out = flow_cli(stack, "usage", "--key", ident, "--json")
        assert out.returncode == 0, out.stderr
        [named] = json.loads(out.stdout)["keys"]
        assert named["api_key_id"] == str(api_key["id"])
        assert Decimal(named["totals"]["cost_usd"]) == cost


async def test_flow_usage_groups_every_keys_usage_without_key(
    stack: localstack.StackInfo, sb: AsyncClient
) -> None:
    name = f"grouped-{uuid.uuid4().hex[:8]}"
    row, _ = await keys_repo.create_local_key(sb, name)
    thread = await threads_repo.create_thread(sb, api_key_id=row["id"], transport="simulated")
    events = [llm_event(thread, model="gpt-4o-mini"), llm_event(thread, model="gpt-4o")]
    await record_usage_events(sb, events)

    out = flow_cli(stack, "usage", "--group-by", "model", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["group_by"] == "model"
    assert len(data["keys"]) > 1, "every key is reported"
    [report] = [r for r in data["keys"] if r["api_key_id"] == str(row["id"])]
    by_model = {g["key"]: g for g in report["groups"]}
    assert set(by_model) == {"gpt-4o-mini", "gpt-4o"}
    assert sum(Decimal(g["cost_usd"]) for g in report["groups"]) == Decimal(
        report["totals"]["cost_usd"]
    )

    table = flow_cli(stack, "usage", "--group-by", "model")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith(name))
    assert sorted(ln.split()[0] for ln in lines[at + 1 : at + 3]) == ["gpt-4o", "gpt-4o-mini"]


async def test_flow_keys_revoke_takes_a_name_and_refuses_an_ambiguous_one(
    stack: localstack.StackInfo, sb: AsyncClient
) -> None:
    name = f"revoke-me-{uuid.uuid4().hex[:8]}"
    row, _ = await keys_repo.create_local_key(sb, name)
    revoked = flow_cli(stack, "keys", "revoke", name)
    assert revoked.returncode == 0, revoked.stderr
    assert str(row["id"]) in revoked.stdout
    again = flow_cli(stack, "keys", "revoke", row["key_prefix"])
    assert again.returncode == 1 and "already revoked" in again.stderr

    shared = f"shared-{uuid.uuid4().hex[:8]}"
    first, _ = await keys_repo.create_local_key(sb, shared)
    second, _ = await keys_repo.create_local_key(sb, shared)
    ambiguous = flow_cli(stack, "keys", "revoke", shared)
    assert ambiguous.returncode == 1
    assert str(first["id"]) in ambiguous.stderr and str(second["id"]) in ambiguous.stderr
    assert all(r["is_active"] for r in await keys_repo.find_keys(sb, shared))
    # A report only reads: a shared name reports each key.
    both = flow_cli(stack, "usage", "--key", shared, "--json")
    assert both.returncode == 0, both.stderr
    ids = {r["api_key_id"] for r in json.loads(both.stdout)["keys"]}
    assert ids == {str(first["id"]), str(second["id"])}
