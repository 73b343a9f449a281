"""``flow keys budget``, and the budget beside each key in ``flow keys list`` and
``flow usage``: the operator's side, on the test stack."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

from supabase import AsyncClient

from flow import localstack
from flow.db import budgets
from flow.db import keys as keys_repo
from tests.budgets.support import spend
from tests.integration.test_cli_usage import flow_cli


async def test_the_operator_sets_shows_and_clears_a_keys_budget(
    stack: localstack.StackInfo, sb: AsyncClient
) -> None:
    name = f"budgeted-{uuid.uuid4().hex[:8]}"
    row, _ = await keys_repo.create_local_key(sb, name)
    key_id = str(row["id"])
    await spend(sb, key_id, "1.25")

    out = flow_cli(
        stack,
        *("keys", "budget", name, "--usd", "50", "--period", "day", "--alert-at", "0.5,0.8"),
        *("--max-call-usd", "2", "--max-concurrent-calls", "10"),
    )
    assert out.returncode == 0, out.stderr
    assert "spent 1.2500 of 50.0000 USD today" in out.stdout
    assert "48.7500 remaining" in out.stdout and "10 calls at once" in out.stdout
    state = await budgets.status(sb, key_id)
    assert state is not None
    assert (Decimal(state["limit_usd"]), state["period"]) == (Decimal("50"), "day")
    assert [Decimal(f) for f in state["alert_at"]] == [Decimal("0.5"), Decimal("0.8")]
    assert (Decimal(state["max_call_usd"]), state["max_concurrent_calls"]) == (Decimal("2"), 10)

    # By its printed prefix too; without options it shows the budget.
    shown = flow_cli(stack, "keys", "budget", row["key_prefix"])
    assert shown.returncode == 0 and "spent 1.2500 of 50.0000 USD today" in shown.stdout

    listed = flow_cli(stack, "keys", "list")
    lines = listed.stdout.splitlines()
    [at] = [n for n, line in enumerate(lines) if line.endswith(name)]
    assert lines[at + 1].strip().startswith("budget: spent 1.2500 of 50.0000 USD today")

    usage = flow_cli(stack, "usage", "--key", name, "--json")
    [report] = json.loads(usage.stdout)["keys"]
    assert Decimal(report["budget"]["remaining_usd"]) == Decimal("48.75")
    table = flow_cli(stack, "usage", "--key", name)
    assert "  budget: spent 1.2500 of 50.0000 USD today" in table.stdout

    cleared = flow_cli(stack, "keys", "budget", name, "--clear")
    assert cleared.returncode == 0 and "cleared" in cleared.stdout
    assert await budgets.status(sb, key_id) is None
    assert "no budget" in flow_cli(stack, "keys", "budget", name).stdout


async def test_bad_budget_options_are_refused_before_anything_is_set(
    stack: localstack.StackInfo, sb: AsyncClient
) -> None:
    name = f"budgeted-{uuid.uuid4().hex[:8]}"
    row, _ = await keys_repo.create_local_key(sb, name)
    for args in (
        ("--usd", "0"),
        ("--usd", "-5"),
        ("--usd", "abc"),
        ("--usd", "5", "--alert-at", "1.5"),
        ("--usd", "5", "--period", "week"),
        ("--usd", "5", "--max-concurrent-calls", "0"),
    ):
        out = flow_cli(stack, "keys", "budget", name, *args)
        assert out.returncode == 2, (args, out.stdout)
    refused = flow_cli(
        stack, "keys", "budget", name, "--usd", "5", "--webhook-url", "http://169.254.169.254/x"
    )
    assert refused.returncode == 1 and "--webhook-url" in refused.stderr
    unknown = flow_cli(stack, "keys", "budget", "no-such-key", "--usd", "5")
    assert unknown.returncode == 1 and "no key matches" in unknown.stderr
    assert await budgets.status(sb, str(row["id"])) is None
