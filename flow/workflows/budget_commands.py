"""``flow keys budget``: the operator sets, shows and clears a key's spending limit; and
the budget figures ``flow keys list`` and ``flow usage`` print beside each key.

::

    flow keys budget KEY --usd 50 --period month [--alert-at 0.5,0.8]
                         [--max-call-usd 2] [--max-concurrent-calls 10] [--webhook-url URL]
    flow keys budget KEY            # show it: spent, reserved, remaining, alerts sent
    flow keys budget KEY --clear

``KEY`` is an id, a printed prefix or a name, as in every ``flow keys`` command. Setting
a budget replaces the key's budget (an option not given is unset). ``--webhook-url`` is
held to the outbound-URL policy. Failure behaviour: a key that matches no key (or
several), or a refused URL, prints ``error: ...`` and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from decimal import Decimal, InvalidOperation
from typing import Any

from flow.config import get_settings
from flow.db import budgets
from flow.db.budgets import PERIODS, Budget
from flow.db.keys import resolve_key
from flow.net.outbound import UrlNotAllowed, check_url

SHOWN_QUANTUM = Decimal("0.0001")


def _usd(value: str) -> Decimal:
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not an amount of USD: {value!r}") from None
    if not amount.is_finite() or amount <= 0 or amount > Decimal("1e9"):
        raise argparse.ArgumentTypeError("must be more than 0 USD (at most 1e9)")
    return amount


def _fractions(value: str) -> list[Decimal]:
    try:
        fractions = [Decimal(part) for part in value.split(",") if part.strip()]
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a list of fractions: {value!r}") from None
    if not fractions or not all(f.is_finite() and 0 < f < 1 for f in fractions):
        raise argparse.ArgumentTypeError("fractions of the limit, each between 0 and 1")
    if len(fractions) > 10:
        raise argparse.ArgumentTypeError("at most 10 fractions")
    return fractions


def _calls(value: str) -> int:
    try:
        calls = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if calls < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return calls


def register(keys_sub: Any) -> None:
    """Add ``budget`` to the ``flow keys`` subcommands."""
    cmd = keys_sub.add_parser(
        "budget",
        help="set, show or clear a key's spending limit",
        description="With --usd, set (replace) the key's budget; with --clear, remove "
        "it; with neither, show it. Periods are calendar UTC days or months, or total.",
    )
    cmd.add_argument("key", help="the key's id, printed prefix or name (a unique one)")
    cmd.add_argument("--usd", type=_usd, help="the most the key may spend in a period")
    cmd.add_argument("--period", choices=PERIODS, default="month", help="(default month)")
    cmd.add_argument(
        "--alert-at", type=_fractions, default=[], help="fractions of the limit, e.g. 0.5,0.8"
    )
    cmd.add_argument("--max-call-usd", type=_usd, help="the most one call may cost")
    cmd.add_argument("--max-concurrent-calls", type=_calls, help="the most live calls at once")
    cmd.add_argument("--webhook-url", help="where this key's alerts go")
    cmd.add_argument("--clear", action="store_true", help="remove the key's budget")
    cmd.set_defaults(func=cmd_keys_budget)


def cmd_keys_budget(args: argparse.Namespace) -> int:
    return asyncio.run(_keys_budget(args))


async def _keys_budget(args: argparse.Namespace) -> int:
    from flow.db.client import create_client

    settings = get_settings()
    sb = await create_client(settings)
    key = await resolve_key(sb, args.key)
    key_id = str(key["id"])
    if args.clear:
        cleared = await budgets.clear_budget(sb, key_id)
        print(f"{'cleared the budget of' if cleared else 'no budget on'} {key['name']!r}")
        return 0
    if args.usd is not None:
        if args.webhook_url:
            try:
                await check_url(args.webhook_url, settings)
            except UrlNotAllowed as exc:
                print(f"error: --webhook-url: {exc}", file=sys.stderr)
                return 1
        budget = Budget(
            limit_usd=args.usd,
            period=args.period,
            alert_at=args.alert_at,
            max_call_usd=args.max_call_usd,
            max_concurrent_calls=args.max_concurrent_calls,
            webhook_url=args.webhook_url,
        )
        await budgets.set_budget(sb, key_id, budget)
    state = await budgets.status(sb, key_id)
    print(f"{key['name']} ({key_id}): {describe(state)}")
    for alert in (state or {}).get("alerts_sent", []):
        print(f"  sent {alert['type']} ({Decimal(alert['fraction'])}) at {alert['sent_at']}")
    return 0


async def budget_states(sb: Any) -> dict[str, dict[str, Any]]:
    """Every budgeted key's state, by key id."""
    return await budgets.states(sb)


def describe(state: dict[str, Any] | None) -> str:
    """One line: spent / limit / remaining, and the limits beside."""
    if state is None:
        return "no budget"
    period = {"day": "today", "month": "this month", "total": "in total"}[state["period"]]
    parts = [
        f"spent {_shown(state['spent_usd'])} of {_shown(state['limit_usd'])} USD {period}",
        f"{_shown(state['reserved_usd'])} reserved by {state['live_calls']} live calls",
        f"{_shown(state['remaining_usd'])} remaining",
    ]
    if state.get("resets_at"):
        parts.append(f"resets {state['resets_at']}")
    if state.get("alert_at"):
        parts.append("alerts at " + ", ".join(str(Decimal(f)) for f in state["alert_at"]))
    if state.get("max_call_usd") is not None:
        parts.append(f"at most {_shown(state['max_call_usd'])} USD a call")
    if state.get("max_concurrent_calls") is not None:
        parts.append(f"{state['max_concurrent_calls']} calls at once")
    if state.get("unpriced_events"):
        parts.append(f"{state['unpriced_events']} unpriced events not counted")
    return "; ".join(parts)


def _shown(amount: str) -> str:
    return f"{Decimal(amount).quantize(SHOWN_QUANTUM):f}"
