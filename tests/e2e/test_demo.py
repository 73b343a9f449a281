"""``flow demo`` from a clean state, non-interactively: its printed totals are the ledger's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from decimal import Decimal
from pathlib import Path

from flow import localstack

ROOT = Path(__file__).resolve().parents[2]


def test_flow_demo_prints_the_ledgers_totals(tmp_path: Path) -> None:
    """Runs in a clean directory with no vendor keys: the offline responder, a local
    PostHog sink and a fresh stack of its own."""
    state_dir = Path(tempfile.mkdtemp(prefix="flow-demo-test-"))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "POSTHOG_", "SUPABASE_", "UNKEY_", "DEEPGRAM_", "FLOW_"))
    }
    env.update(
        FLOW_STACK_DIR=str(state_dir),
        FLOW_SPOOL_DIR=str(tmp_path / "spool"),
        # Ports of its own, so a developer's running stack or API is never touched.
        FLOW_STACK_PG_PORT=str(localstack.free_port(None)),
        FLOW_STACK_REST_PORT=str(localstack.free_port(None)),
        FLOW_STACK_GATEWAY_PORT=str(localstack.free_port(None)),
    )
    try:
        out = subprocess.run(
            [sys.executable, "-m", "flow.cli", "demo", "--exit", "--calls", "2"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        total = re.search(
            r"^TOTAL cost_usd=(\S+) calls=(\d+) ledger_rows=(\d+) api_key_id=(\S+)$",
            out.stdout,
            re.M,
        )
        assert total, out.stdout
        cost, calls, rows, key_id = total.groups()
        assert int(calls) == 2
        assert "offline responder" in out.stdout and "local sink" in out.stdout
        assert out.stdout.count(" completed\n") >= 2

        # The demo stopped its stack; bring the same data back and read the ledger.
        info = localstack.up(state_dir, fixed_ports=False, quiet=True)
        ledger = localstack.psql(
            info,
            "-At",
            "-c",
            "select count(*), coalesce(sum(cost_usd), 0), count(distinct workflow_thread_id), "
            "count(*) filter (where category = 'insights'), count(*) filter (where kind = 'tts')"
            f" from usage_events where api_key_id = '{key_id}'",
        ).strip()
        n_rows, ledger_cost, n_threads, n_insights, n_tts = ledger.split("|")
        assert int(n_rows) == int(rows) > 0
        assert Decimal(ledger_cost) == Decimal(cost) > 0
        assert int(n_threads) == 2
        assert int(n_insights) == 2, "one insights call per call"
        assert int(n_tts) > 0
        # Per-call lines agree with each thread's usage_stats.
        for line in re.findall(
            r"call total \$(\S+)\s+\(usage_stats.total_cost_usd \$(\S+)\)", out.stdout
        ):
            assert line[0] == line[1]
    finally:
        localstack.destroy(state_dir)
