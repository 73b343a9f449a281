"""``flow reconcile``: the ledger against the vendor's own usage, per day, model and unit.

``--provider openai`` reads OpenAI's organization Usage and Costs APIs with
``OPENAI_ADMIN_KEY``, ``--provider deepgram`` Deepgram's project usage breakdown
(:mod:`flow.reconcile.deepgram`) (or ``--usage-file``, repeatable, saved answers of
either) over the UTC days
``--start`` to ``--end`` (both included) and the ledger's sums over the same days
(every key's calls with that vendor). Each line is a day, a model and a unit with both
figures, their difference and a diagnosis (see :mod:`flow.reconcile.compare`).

Exit status: 0 when every line agrees within the tolerance, 1 when any differs (so a
cron job can alert), 2 when the figures could not be had (bad dates, the vendor's API
refused or could not be reached, an unreadable file, the database).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from flow.config import MAX_REPORT_DAYS, get_settings
from flow.reconcile import deepgram
from flow.reconcile.compare import Diagnosis, Line, Tolerance, plain, reconcile
from flow.reconcile.openai import VendorError, VendorUsage, fetch_pages, load_files, read_pages

PROVIDERS = ("openai", "deepgram")
VENDOR_NAMES = {"openai": "OpenAI", "deepgram": "Deepgram"}


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {value!r}") from None


def _usd(value: str) -> Decimal:
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not an amount: {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise argparse.ArgumentTypeError("must be zero or more")
    return amount


def scope(project: str | None, seen: set[str], provider: str = "openai") -> str:
    """What the vendor's figures cover, said plainly."""
    if provider == "deepgram":
        return (
            f"Deepgram's figures cover the whole project {project or '(DEEPGRAM_PROJECT_ID)'}: "
            "every app using it, not only Flow's calls; a request is a streamed session"
        )
    if project:
        return (
            f"OpenAI's figures cover the whole project {project}: every app using it, "
            "not only Flow's calls"
        )
    projects = ", ".join(sorted(seen)) or "every project"
    return (
        f"OpenAI's figures cover the whole organization ({projects}), Flow's only its own "
        "calls: give --project to compare one project"
    )


def cmd_reconcile(args: argparse.Namespace) -> int:
    if args.end < args.start:
        print("error: --end is before --start", file=sys.stderr)
        return 2
    if (args.end - args.start).days + 1 > MAX_REPORT_DAYS:
        print(f"error: at most {MAX_REPORT_DAYS} days at once", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_reconcile(args))
    except VendorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


async def _reconcile(args: argparse.Namespace) -> int:
    from flow.db.client import create_client
    from flow.db.usage import ledger_daily_usage

    settings = get_settings()
    vendor = await _vendor(args, settings)
    start = datetime(args.start.year, args.start.month, args.start.day, tzinfo=UTC)
    end = start + timedelta(days=(args.end - args.start).days + 1)
    rows = await ledger_daily_usage(await create_client(settings), args.provider, start, end)
    tolerance = Tolerance(cost_usd=args.cost_tolerance)
    lines = reconcile(rows, vendor, tolerance, args.provider)
    differing = [line for line in lines if line.diagnosis != Diagnosis.OK]
    counts = Counter(line.diagnosis.value for line in differing)
    unpriced = sum(int(row.get("unpriced_events") or 0) for row in rows)
    summary = {"lines": len(lines), "differences": len(differing), **counts}
    if args.json:
        report = {
            "provider": args.provider,
            "start": args.start.isoformat(),
            "end": args.end.isoformat(),
            "project": args.project,
            "vendor_scope": scope(args.project, vendor.projects, args.provider),
            "tolerance": tolerance.to_json(),
            "agrees": not differing,
            "summary": summary,
            "ledger_unpriced_events": unpriced,
            "unattributed_vendor_cost_usd": str(vendor.unattributed_cost_usd),
            "lines": [line.to_json() for line in lines],
        }
        print(json.dumps(report, indent=2))
    else:
        _print(args, lines if not args.only_differences else differing, summary, tolerance)
        print(scope(args.project, vendor.projects, args.provider))
        if not vendor.has_costs:
            print(f"{VENDOR_NAMES[args.provider]} gave no costs: rates were not compared")
        if unpriced:
            print(f"{unpriced} ledger events are unpriced (cost NULL): `flow prices --check`")
    return 1 if differing else 0


async def _vendor(args: argparse.Namespace, settings: Any) -> VendorUsage:
    """The vendor's figures over the window, from its API or from saved answers."""
    if args.provider == "deepgram":
        if args.usage_file:
            answers = load_files([Path(p) for p in args.usage_file])
        else:
            answers = await deepgram.fetch_breakdowns(settings, args.start, args.end, args.project)
        return deepgram.read_breakdowns(answers, args.start, args.end)
    if args.usage_file:
        pages = load_files([Path(p) for p in args.usage_file])
    else:
        pages = await fetch_pages(settings, args.start, args.end, args.project)
    return read_pages(pages, args.start, args.end, args.project)


def _model(line: Line) -> str:
    """The model as both sides name it (``gpt-4o-mini = gpt-4o-mini-2024-07-18``)."""
    ours = ",".join(line.ledger_models) or "-"
    theirs = ",".join(line.vendor_models) or "-"
    return ours if ours == theirs else f"{ours} = {theirs}"


def _print(
    args: argparse.Namespace, lines: list[Line], summary: dict[str, Any], tolerance: Tolerance
) -> None:
    print(
        f"the ledger (provider {args.provider}) against {VENDOR_NAMES[args.provider]}'s "
        f"usage, {args.start} to {args.end} (UTC days)"
    )
    print(f"tolerance: {tolerance.describe()}")
    print(f"{'day':<12}{'model (ledger = vendor)':<44}{'unit':<20}", end="")
    print(f"{'ledger':>16}{'vendor':>16}{'difference':>14}  diagnosis")
    for line in lines:
        ledger, vendor, diff = (
            plain(v) or "-" for v in (line.ledger, line.vendor, line.difference)
        )
        print(f"{line.day:<12}{_model(line)[:43]:<44}{line.unit:<20}", end="")
        print(f"{ledger:>16}{vendor:>16}{diff:>14}  {line.diagnosis.value}")
    parts = ", ".join(f"{summary.get(d.value, 0)} {d.value}" for d in Diagnosis if d != "ok")
    verdict = "everything agrees" if not summary["differences"] else "differences found"
    print(f"{summary['lines']} lines, {summary['differences']} differ ({parts}): {verdict}")


def register(sub: Any) -> None:
    """Adds ``reconcile`` to the ``flow`` command."""
    rec = sub.add_parser(
        "reconcile",
        help="compare the ledger with the vendor's own usage (exit 1 when they differ)",
        description="Compare the ledger with what the vendor reports it served, per UTC "
        "day, model and unit; exit 0 when everything agrees within the tolerance, 1 when "
        "anything differs, 2 when the figures could not be had.",
    )
    rec.add_argument("--provider", choices=PROVIDERS, default="openai")
    rec.add_argument("--start", type=_date, required=True, help="first day, YYYY-MM-DD (UTC)")
    rec.add_argument("--end", type=_date, required=True, help="last day, included")
    rec.add_argument(
        "--project",
        default=None,
        help="OpenAI: only this project's usage; Deepgram: the project (or DEEPGRAM_PROJECT_ID)",
    )
    rec.add_argument(
        "--usage-file",
        action="append",
        default=[],
        metavar="FILE",
        help="saved answers of the vendor's usage API instead of the API (repeatable)",
    )
    rec.add_argument(
        "--cost-tolerance",
        type=_usd,
        default=Tolerance().cost_usd,
        metavar="USD",
        help=f"cost difference allowed per day and model (default {Tolerance().cost_usd})",
    )
    rec.add_argument("--only-differences", action="store_true", help="print differing lines")
    rec.add_argument("--json", action="store_true", help="print JSON (every line)")
    rec.set_defaults(func=cmd_reconcile)
