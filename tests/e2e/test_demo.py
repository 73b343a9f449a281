"""``flow demo`` from a clean state, non-interactively: its printed totals are the ledger's;
it stops only the stack it started and reuses the stack's one demo key."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from decimal import Decimal
from pathlib import Path

import pytest
from supabase import AsyncClient

from flow import localstack
from flow.db import keys as keys_repo
from flow.demo.run import DEMO_KEY_FILE, DEMO_KEY_NAME, DEMO_KEY_OWNER, demo_key

ROOT = Path(__file__).resolve().parents[2]
TOTAL = re.compile(
    r"^TOTAL cost_usd=(\S+) calls=(\d+) ledger_rows=(\d+) api_key_id=(\S+)$", re.MULTILINE
)
STT_METERED = re.compile(r"^  STT metered (\S+) s in \d+ segment", re.MULTILINE)


def demo_env(state_dir: Path, tmp_path: Path) -> dict[str, str]:
    """No vendor keys, a stack directory and ports of its own (a developer's running
    stack or API is never touched), and this checkout's ``flow`` package."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "POSTHOG_", "SUPABASE_", "UNKEY_", "DEEPGRAM_", "FLOW_"))
    }
    env.update(
        FLOW_STACK_DIR=str(state_dir),
        FLOW_SPOOL_DIR=str(tmp_path / "spool"),
        FLOW_STACK_PG_PORT=str(localstack.free_port(None)),
        FLOW_STACK_REST_PORT=str(localstack.free_port(None)),
        FLOW_STACK_GATEWAY_PORT=str(localstack.free_port(None)),
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    )
    return env


def run_demo(env: dict[str, str], cwd: Path, calls: int) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", "flow.cli", "demo", "--exit", "--calls", str(calls)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def test_flow_demo_prints_the_ledgers_totals(tmp_path: Path) -> None:
    """Runs in a clean directory with no vendor keys: the offline responder, a local
    PostHog sink and a fresh stack of its own."""
    state_dir = Path(tempfile.mkdtemp(prefix="flow-demo-test-"))
    try:
        out = run_demo(demo_env(state_dir, tmp_path), tmp_path, calls=2)
        total = TOTAL.search(out.stdout)
        assert total, out.stdout
        cost, calls, rows, key_id = total.groups()
        assert int(calls) == 3, "two simulated calls and one over real audio"
        assert "offline responder" in out.stdout and "local sink" in out.stdout
        assert out.stdout.count(" completed\n") >= 3
        # The call over real audio: its STT seconds as the report prints them.
        printed_stt = STT_METERED.search(out.stdout)
        assert printed_stt, out.stdout
        assert "the caller heard" in out.stdout and "of the bot's voice" in out.stdout

        # The demo stopped the stack it started; bring the same data back, read the ledger.
        assert localstack.status(state_dir) is None
        assert "stopped the API and the local stack" in out.stdout
        info = localstack.up(state_dir, fixed_ports=False, quiet=True)
        ledger = localstack.psql(
            info,
            "-At",
            "-c",
            "select count(*), coalesce(sum(cost_usd), 0), count(distinct workflow_thread_id), "
            "count(*) filter (where category = 'insights'), count(*) filter (where kind = 'tts'),"
            " coalesce(sum(audio_seconds) filter (where kind = 'stt'), 0)"
            f" from usage_events where api_key_id = '{key_id}'",
        ).strip()
        n_rows, ledger_cost, n_threads, n_insights, n_tts, stt_seconds = ledger.split("|")
        assert int(n_rows) == int(rows) > 0
        assert Decimal(ledger_cost) == Decimal(cost) > 0
        assert int(n_threads) == 3
        assert int(n_insights) == 3, "one insights call per call"
        assert int(n_tts) > 0
        assert Decimal(stt_seconds) == Decimal(printed_stt.group(1)) > 0
        # Per-call lines agree with each thread's usage_stats.
        for line in re.findall(
            r"call total \$(\S+)\s+\(usage_stats.total_cost_usd \$(\S+)\)", out.stdout
        ):
            assert line[0] == line[1]
    finally:
        localstack.destroy(state_dir)


@pytest.mark.timeout(600)
def test_flow_demo_leaves_a_running_stack_up_and_reuses_its_demo_key(tmp_path: Path) -> None:
    state_dir = Path(tempfile.mkdtemp(prefix="flow-demo-test-"))
    env = demo_env(state_dir, tmp_path)
    try:
        info = localstack.up(state_dir, fixed_ports=False, quiet=True)
        key_ids = []
        for _ in range(2):
            out = run_demo(env, tmp_path, calls=1)
            assert "already running" in out.stdout
            total = TOTAL.search(out.stdout)
            assert total, out.stdout
            key_ids.append(total.group(4))
            assert localstack.status(state_dir) == info, "the stack it found keeps running"
        assert key_ids[0] == key_ids[1], "the second run reuses the demo key"
        keys = localstack.psql(
            info,
            "-At",
            "-c",
            "select id, is_active from api_keys where name = 'demo' and owner = 'flow demo'",
        ).split()
        assert keys == [f"{key_ids[0]}|t"]
        assert (state_dir / "demo_key").stat().st_mode & 0o077 == 0
    finally:
        localstack.destroy(state_dir)


async def test_the_demo_key_is_reused_and_replaced_only_when_unusable(
    sb: AsyncClient, tmp_path: Path
) -> None:
    async def active_demo_keys() -> list[str]:
        found = await keys_repo.find_keys(sb, DEMO_KEY_NAME)
        return [str(r["id"]) for r in found if r["owner"] == DEMO_KEY_OWNER and r["is_active"]]

    first, plaintext = await demo_key(sb, tmp_path)
    again, same = await demo_key(sb, tmp_path)
    assert (again["id"], same) == (first["id"], plaintext)
    assert again["key_prefix"] == plaintext[: len(again["key_prefix"])]

    # Its plaintext is lost: that key is revoked and a new one made.
    (tmp_path / DEMO_KEY_FILE).unlink()
    second, other = await demo_key(sb, tmp_path)
    assert second["id"] != first["id"] and other != plaintext
    assert await active_demo_keys() == [str(second["id"])]

    # It was revoked: a new one is made.
    await keys_repo.revoke_key(sb, str(second["id"]))
    third, _ = await demo_key(sb, tmp_path)
    assert await active_demo_keys() == [str(third["id"])]
