"""The ``flow`` command: serve the API, manage keys, run the local stack.

Each subcommand is a small function registered in :func:`build_parser`; long work
prints progress to stderr and results to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from flow.config import MAX_REPORT_DAYS, get_settings
from flow.db.client import connect
from flow.logs import configure_logging


def _run(coro: Coroutine[Any, Any, int]) -> int:
    return asyncio.run(coro)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the API; SIGTERM drains the instance (:mod:`flow.server`), then exits 0."""
    import uvicorn

    from flow.api.limits import MAX_HEADER_READ_BYTES
    from flow.logs import uvicorn_log_config
    from flow.main import create_app
    from flow.server import GRACEFUL_SHUTDOWN_SECONDS, FlowServer

    settings = get_settings()
    configure_logging(settings.flow_log_level, settings.flow_log_format)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_level=settings.flow_log_level.lower(),
        log_config=uvicorn_log_config(settings.flow_log_format),
        proxy_headers=True,
        # The h11 server stops reading a header block past this size (400, connection
        # closed): a huge header never fills memory. The app answers 431 below it.
        http="h11",
        h11_max_incomplete_event_size=MAX_HEADER_READ_BYTES,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    FlowServer(config, app).run()
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    """Who to bill: every key's usage and cost over a period (or the keys ``--key``
    names), each broken down by ``--group-by`` when given, and its budget if it has
    one."""
    from datetime import UTC, datetime, timedelta

    from flow.db import keys, usage
    from flow.workflows.budget_commands import budget_states, describe

    if args.csv:
        from flow.billing.commands import usage_csv

        return usage_csv(args)
    if args.group_by == "month" or args.start or args.end:
        print("error: --group-by month, --start and --end go with --csv", file=sys.stderr)
        return 2

    async def go() -> int:
        sb = await connect()
        budgets = await budget_states(sb)
        end = datetime.now(UTC)
        start = end - timedelta(days=args.days)
        if args.key:
            # A report only reads: a name several keys share reports each of them.
            rows = await keys.keys_named(sb, args.key)
        else:
            rows = await keys.list_keys(sb)
        reports = []
        for row in rows:
            report = await usage.usage_report(sb, str(row["id"]), start, end, args.group_by)
            reports.append(
                {
                    "api_key_id": str(row["id"]),
                    "name": row["name"],
                    "key": _ident(row),
                    **report,
                    "budget": budgets.get(str(row["id"])),
                }
            )
        if args.json:
            print(
                json.dumps(
                    {
                        "start": start.isoformat(),
                        "end": end.isoformat(),
                        "group_by": args.group_by,
                        "keys": reports,
                    },
                    indent=2,
                )
            )
            return 0
        print(f"usage from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC")
        if args.group_by:
            print(f"each key broken down by {args.group_by}")
        header = f"{'':<38}{'calls':>7}{'llm':>7}{'tokens':>12}{'tts chars':>11}"
        print(header + f"{'stt s':>10}{'phone s':>10}{'unpriced':>9}{'cost USD':>16}")
        for report in reports:
            lines = [(f"{report['name'][:20]} ({report['key']})"[:37], report["totals"])]
            lines += [(f"  {g['key']}"[:36], g) for g in report.get("groups", [])]
            for label, f in lines:
                tokens = f["input_tokens"] + f["output_tokens"]
                print(
                    f"{label:<38}{f['calls']:>7}{f['llm_calls']:>7}{tokens:>12}"
                    f"{f['tts_characters']:>11}{f['stt_seconds']:>10}"
                    f"{f.get('telephony_seconds', '0'):>10}"
                    f"{f['unpriced_events']:>9}{f['cost_usd']:>16}"
                )
            if report["budget"] is not None:
                print(f"  budget: {describe(report['budget'])}")
        return 0

    return _run(go())


def cmd_prices(args: argparse.Namespace) -> int:
    """Where every price comes from: the voice table with its sources, dates and tiers,
    the overrides in effect, or (``--check MODEL``) how one model would be priced."""
    from flow.metering import provenance
    from flow.metering.pricing import GENAI_PRICES_SOURCE, PriceBook

    book = PriceBook.from_settings(get_settings())
    if args.check:
        found = provenance.check(book, args.check, args.provider)
        priced = bool(found["llm"] or found["voice"])
        if args.json:
            print(json.dumps(found, indent=2))
            return 0 if priced else 1
        named = f"{found['provider']}/{found['model']}" if found["provider"] else found["model"]
        print(named)
        llm = found["llm"]
        print(
            f"  LLM tokens: {llm['price_source']}: {llm['rate']}"
            if llm
            else "  LLM tokens: no price"
        )
        for row in found["voice"]:
            print(f"  voice: {row['price_source']}: {row['rate']} ({row['tier']})")
            if not row["override"]:
                print(f"    checked {row['checked']} against {row['source_url']}")
        if not found["voice"]:
            print("  TTS characters / STT audio: no voice price")
        if not priced:
            print("  unpriced: its usage is recorded with cost NULL (never zero)")
        return 0 if priced else 1
    table, overrides = provenance.voice_table(book), provenance.llm_overrides(book)
    if args.json:
        llm_prices = {"source": GENAI_PRICES_SOURCE, "overrides": overrides}
        print(json.dumps({"llm": llm_prices, "voice": table}, indent=2))
        return 0
    print(f"LLM tokens: {GENAI_PRICES_SOURCE} (historical prices per model)")
    if overrides:
        print("overrides (FLOW_PRICE_OVERRIDES), USD per 1M tokens:")
        for model, rates in overrides.items():
            print(f"  {model}: " + ", ".join(f"{name} {rate}" for name, rate in rates.items()))
    else:
        print("no overrides (FLOW_PRICE_OVERRIDES is empty)")
    print("\nvoice prices (TTS characters, STT audio), USD:")
    print(f"  {'provider/model':<30}{'rate':<28}{'tier':<40}{'checked':<12}source")
    for row in table:
        source = "override (FLOW_VOICE_PRICES)" if row["override"] else row["source_url"]
        print(f"  {row['key']:<30}{row['rate']:<28}{row['tier']:<40}{row['checked']:<12}{source}")
        if row["note"]:
            print(f"  {'':<30}note: {row['note']}")
    return 0


def _ident(row: dict[str, Any]) -> str:
    """How a key is shown: its printed prefix, its Unkey id, or the start of its id."""
    return str(row["key_prefix"] or row["unkey_key_id"] or str(row["id"])[:8])


def cmd_stack(args: argparse.Namespace) -> int:
    from flow.localstack.__main__ import run as stack_run

    return stack_run(args)


def cmd_config(args: argparse.Namespace) -> int:
    """Print the effective settings with secrets masked."""
    settings = get_settings()
    print(json.dumps(json.loads(settings.model_dump_json()), indent=2, default=str))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from flow.demo.run import main as demo_main

    return demo_main(calls=args.calls, port=args.port, exit_after=args.exit)


def _days(value: str) -> int:
    try:
        days = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of days: {value!r}") from None
    if not 1 <= days <= MAX_REPORT_DAYS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_REPORT_DAYS}")
    return days


def _calls(value: str) -> int:
    from flow.demo.run import SCRIPTS

    try:
        calls = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if not 1 <= calls <= len(SCRIPTS):
        raise argparse.ArgumentTypeError(f"must be between 1 and {len(SCRIPTS)}")
    return calls


Command = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flow", description="Voice bots that meter every cent: per call, per key."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API (and the export scheduler)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.set_defaults(func=cmd_serve)

    from flow.auth.commands import register_keys as register_key_commands
    from flow.billing.commands import register_keys
    from flow.workflows.budget_commands import register as register_budget

    keys_sub = register_key_commands(sub)
    register_keys(keys_sub)
    register_budget(keys_sub)

    demo = sub.add_parser("demo", help="run Flow end to end on this machine, no keys needed")
    demo.add_argument("--calls", type=_calls, default=3, help="simulated calls to run (1-3)")
    demo.add_argument("--port", type=int, default=None, help="API port (default: free)")
    demo.add_argument(
        "--exit", action="store_true", help="stop after the report instead of serving"
    )
    demo.set_defaults(func=cmd_demo)

    usage_cmd = sub.add_parser("usage", help="usage and cost per key: who to bill")
    usage_cmd.add_argument(
        "--days",
        type=_days,
        default=30,
        help=f"the last N days, 1-{MAX_REPORT_DAYS} (default 30)",
    )
    usage_cmd.add_argument(
        "--key",
        default=None,
        help="only the key with this id or prefix, or the keys with this name",
    )
    usage_cmd.add_argument(
        "--group-by",
        choices=["day", "model", "category", "kind", "end_user", "month"],
        default=None,
        help="break each key's usage down (with --csv: day or month)",
    )
    usage_cmd.add_argument("--json", action="store_true", help="print JSON")
    usage_cmd.add_argument(
        "--csv", action="store_true", help="print the billing CSV (as GET /api/usage/export.csv)"
    )
    usage_cmd.add_argument("--start", help="with --csv: from this UTC time (ISO 8601, inclusive)")
    usage_cmd.add_argument("--end", help="with --csv: to this UTC time (exclusive; default now)")
    usage_cmd.set_defaults(func=cmd_usage)

    from flow.localstack.__main__ import add_arguments as stack_arguments

    stack = sub.add_parser(
        "stack",
        help="the local Supabase-compatible stack",
        description="up/env print the stack's variables; with --write FILE they set them "
        "in that dotenv file (e.g. .env), keeping its other lines.",
    )
    stack_arguments(stack)
    stack.set_defaults(func=cmd_stack)

    prices = sub.add_parser("prices", help="where every price comes from: sources, dates, tiers")
    prices.add_argument("--check", metavar="MODEL", help="how MODEL (or provider/model) is priced")
    prices.add_argument("--provider", default=None, help="the vendor of --check MODEL")
    prices.add_argument("--json", action="store_true", help="print JSON")
    prices.set_defaults(func=cmd_prices)

    sub.add_parser("config", help="print effective settings (secrets masked)").set_defaults(
        func=cmd_config
    )

    from flow.auth.commands import register as register_admin_token

    register_admin_token(sub)
    from flow.billing.commands import register_reprice

    register_reprice(sub)
    from flow.exporters.commands import register as register_exports
    from flow.telephony.numbers import register as register_numbers

    register_exports(sub)
    from flow.reconcile.commands import register as register_reconcile

    register_reconcile(sub)
    register_numbers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Command = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a clear one-line error, not a traceback, for operators
        from flow.db.client import DatabaseError, DatabaseUnavailable
        from flow.db.keys import IdentError

        if isinstance(exc, IdentError):  # a key or token named that is not one row
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if isinstance(exc, DatabaseError | DatabaseUnavailable):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
