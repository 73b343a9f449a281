"""The operator's billing commands: ``flow usage --csv`` (the billing CSV, the same as
``GET /api/usage/export.csv``), ``flow keys stripe-customer KEY cus_...`` (who a key
is billed as in Stripe) and ``flow reprice`` (events recorded unpriced, priced now).

Failure behaviour: a key that matches none (or, for ``stripe-customer``, several)
prints ``error: ...`` and exits 1; a bad option value exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from flow.config import MAX_REPORT_DAYS, get_settings
from flow.db.client import connect

CUSTOMER_ID = re.compile(r"^cus_[A-Za-z0-9]{1,250}$")


def _utc(text: str) -> datetime:
    at = datetime.fromisoformat(text)
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def usage_csv(args: argparse.Namespace) -> int:
    """Print the billing CSV of every key (or of the keys ``--key`` names)."""
    from flow.billing.csv_export import csv_lines
    from flow.db import keys

    if args.group_by not in (None, "day", "month"):
        print("error: --csv groups by day or month only", file=sys.stderr)
        return 2
    try:
        end = _utc(args.end) if args.end else datetime.now(UTC)
        start = _utc(args.start) if args.start else end - timedelta(days=args.days)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if start >= end:
        print("error: start must be before end", file=sys.stderr)
        return 2
    if end - start > timedelta(days=MAX_REPORT_DAYS):
        print(f"error: the range may span at most {MAX_REPORT_DAYS} days", file=sys.stderr)
        return 2

    async def go() -> int:
        sb = await connect()
        key_ids = None
        if args.key:
            found = await keys.keys_named(sb, args.key)
            key_ids = [str(r["id"]) for r in found]
        async for line in csv_lines(sb, start, end, args.group_by, key_ids=key_ids):
            sys.stdout.write(line)
        sys.stdout.flush()
        return 0

    return asyncio.run(go())


def cmd_stripe_customer(args: argparse.Namespace) -> int:
    from flow.db import billing
    from flow.db.keys import resolve_key

    customer = None if args.customer in ("none", "-") else args.customer
    if customer is not None and not CUSTOMER_ID.match(customer):
        print("error: a Stripe customer id is cus_ followed by letters and digits", file=sys.stderr)
        return 2

    async def go() -> int:
        sb = await connect()
        key = await resolve_key(sb, args.key)
        await billing.set_stripe_customer(sb, str(key["id"]), customer)
        if customer is None:
            print(f"key {key['id']} ({key['name']}) is no longer billed in Stripe")
        else:
            print(f"key {key['id']} ({key['name']}) is billed as Stripe customer {customer}")
        return 0

    return asyncio.run(go())


def register_keys(keys_sub: Any) -> None:
    """Adds ``stripe-customer`` to ``flow keys``."""
    cmd = keys_sub.add_parser(
        "stripe-customer", help="bill a key's usage to a Stripe customer (the stripe export)"
    )
    cmd.add_argument("key", help="the key's id, printed prefix or name (a unique one)")
    cmd.add_argument("customer", help="the Stripe customer id (cus_...), or none to unset")
    cmd.set_defaults(func=cmd_stripe_customer)


def cmd_reprice(args: argparse.Namespace) -> int:
    """Price the events recorded unpriced from the current price table (a dry run unless
    ``--apply``)."""
    import json

    from flow.billing.reprice import reprice
    from flow.db import keys
    from flow.metering.pricing import PriceBook

    try:
        since = _utc(args.since) if args.since else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def go() -> int:
        sb = await connect()
        key_ids = None
        if args.key:
            found = await keys.keys_named(sb, args.key)
            key_ids = [str(r["id"]) for r in found]
        book = PriceBook.from_settings(get_settings())
        summary = await reprice(sb, book, key_ids=key_ids, since=since, apply=args.apply)
        if args.json:
            print(json.dumps(summary.as_json(), indent=2))
            return 0
        print(f"{'provider/model':<44}{'events':>8}{'adds USD':>18}{'no price':>10}  source")
        for name, line in sorted(summary.by_model.items()):
            print(
                f"{name[:43]:<44}{line.events:>8}{line.cost_usd:>18}{line.unpriced:>10}"
                f"  {line.source or '-'}"
            )
        print(f"{summary.priced} event(s) priced, adding ${summary.cost_usd}")
        if summary.still_unpriced:
            print(f"{summary.still_unpriced} event(s) still have no price (add it, then rerun)")
        if args.apply:
            print(f"recorded: {summary.recorded} event(s), ${summary.recorded_cost_usd}")
        else:
            print("dry run: nothing changed (run with --apply to record these prices)")
        return 0

    return asyncio.run(go())


def register_reprice(sub: Any) -> None:
    """Adds ``reprice`` to the ``flow`` command."""
    cmd = sub.add_parser(
        "reprice", help="price events recorded unpriced from the current price table"
    )
    cmd.add_argument("--key", help="only this key's events (id, prefix or name)")
    cmd.add_argument("--since", help="only events from this UTC time (ISO 8601)")
    cmd.add_argument("--apply", action="store_true", help="record the prices (default: dry run)")
    cmd.add_argument("--json", action="store_true", help="print JSON")
    cmd.set_defaults(func=cmd_reprice)
