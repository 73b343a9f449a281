"""``flow integrations add|list|pause|resume|remove`` and ``flow sync``: the operator's
side of analytics exports (any key's integrations, or ``--all-keys`` for everything).

``--key`` (alias ``--key-id``) names a key by id, prefix or name. ``flow sync`` runs one
cycle of every active integration now, whatever its schedule, with a progress bar on
stderr for backfills. Each destination's own options come from its spec in
:mod:`flow.exporters.registry`.

Failure behaviour: a key that matches no key (or several) prints ``error: ...`` and
exits 1, as does an unknown integration id; a body, a URL the outbound-URL policy
refuses, or credentials refused before saving print ``error: ...`` and exit 2;
``flow sync`` exits 1 when an integration ends in error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import TypeAdapter, ValidationError

from flow.config import get_settings
from flow.db import integrations as integrations_db
from flow.db.client import connect
from flow.db.integrations import IntegrationStatus
from flow.db.keys import resolve_key
from flow.exporters import integrations as service
from flow.exporters.base import CredentialsInvalid, IntegrationInputError
from flow.exporters.registry import PROVIDERS, IntegrationCreate
from flow.net.outbound import UrlNotAllowed

# Create body fields every integration has, as options of the same name (--event-name).
_COMMON_OPTIONS = ("name", "sync_interval_seconds", "event_name", "distinct_id")


def _destination_options() -> dict[str, str]:
    """Every destination's own create fields, as options, with their help (each
    destination's named when several take the same option)."""
    helps: dict[str, list[tuple[str, str]]] = {}
    for spec in PROVIDERS.values():
        for field, text in spec.cli_help.items():
            helps.setdefault(field, []).append((spec.name, text))
    return {
        field: texts[0][1] if len(texts) == 1 else "; ".join(f"{n}: {t}" for n, t in texts)
        for field, texts in helps.items()
    }


_DESTINATION_OPTIONS = _destination_options()


def _body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"provider": args.provider}
    backfill: Any = args.backfill
    if backfill.isdigit():
        backfill = {"days": int(backfill)}
    elif backfill not in ("none", "all"):
        backfill = {"from": backfill}
    for name in _COMMON_OPTIONS:
        value = getattr(args, name)
        if value is not None:
            body[name] = value
    spec = PROVIDERS[args.provider]
    for name in _DESTINATION_OPTIONS:
        value = getattr(args, name)
        if value is not None:
            body[name] = spec.cli_value(name, value)
    body["backfill"] = backfill
    return body


async def _key_id(sb: Any, ident: str | None) -> str | None:
    """The id of the key named by ``ident`` (id, prefix or name), ``None`` for none;
    raises :class:`LookupError` when no key or several match."""
    if ident is None:
        return None
    return str((await resolve_key(sb, ident))["id"])


def cmd_add(args: argparse.Namespace) -> int:
    async def go() -> int:
        if PROVIDERS[args.provider].operator_only:
            if args.key:
                print(f"error: a {args.provider} integration covers every key", file=sys.stderr)
                return 2
            args.all_keys = True
        if not args.all_keys and not args.key:
            print("error: give --key KEY or --all-keys", file=sys.stderr)
            return 2
        try:
            body = TypeAdapter(IntegrationCreate).validate_python(_body(args))
        except ValidationError as exc:
            print(f"error: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}", file=sys.stderr)
            return 2
        sb = await connect()
        api_key_id = await _key_id(sb, args.key)
        try:
            row = await service.create_integration(
                sb, get_settings(), body, api_key_id=api_key_id, all_keys=args.all_keys
            )
        except (UrlNotAllowed, CredentialsInvalid, IntegrationInputError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(service.public_view(row), indent=2, default=str))
        return 0

    return asyncio.run(go())


def cmd_list(args: argparse.Namespace) -> int:
    async def go() -> int:
        sb = await connect()
        api_key_id = await _key_id(sb, args.key)
        for row in await integrations_db.list_integrations(sb, api_key_id=api_key_id):
            v = service.public_view(row)
            scope = "all keys" if v["all_keys"] else v["api_key_id"]
            print(
                f"{v['id']}  {v['provider']:<8}  {v['status']:<7}  exported={v['events_exported']}"
                f"  skipped={v['events_skipped']}  last_sync={v['last_synced_at']}  {scope}"
                + (f"\n    last error: {v['last_error']}" if v["last_error"] else "")
                + (f"\n    warning: {v['last_warning']}" if v["last_warning"] else "")
            )
        return 0

    return asyncio.run(go())


# action -> (what it does to the row, what to print once done)
_BY_ID: dict[str, tuple[Callable[..., Awaitable[Any]], str]] = {
    "pause": (integrations_db.pause_integration, "paused"),
    "resume": (integrations_db.resume_integration, "resumed"),
    "remove": (integrations_db.delete_integration, "removed"),
}


def _by_id(action: str) -> Callable[[argparse.Namespace], int]:
    apply, done_word = _BY_ID[action]

    def cmd(args: argparse.Namespace) -> int:
        async def go() -> int:
            if not await apply(await connect(), args.id, api_key_id=None):
                print(f"no integration {args.id}", file=sys.stderr)
                return 1
            print(f"{done_word} {args.id}")
            return 0

        return asyncio.run(go())

    return cmd


def cmd_sync(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from flow.exporters.sync import Exporter

    async def go() -> int:
        exporter = Exporter(await connect(), get_settings())
        console = Console(stderr=True)
        failed = 0
        try:
            with Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            ) as bar:
                tasks: dict[str, Any] = {}

                async def on_claim(row: dict[str, Any]) -> None:
                    total = await exporter.backlog(row["id"])
                    tasks[row["id"]] = bar.add_task(
                        f"{row['provider']} {row['id'][:8]}", total=total
                    )

                def progress(iid: str, rows: int) -> None:
                    bar.advance(tasks[iid], rows)

                outcomes = await exporter.run_due(
                    force=True, ids=args.id or None, progress=progress, on_claim=on_claim
                )
        finally:
            await exporter.aclose()
        for o in outcomes:
            line = f"{o.integration_id}  {o.status:<7}  exported={o.exported}  skipped={o.skipped}"
            print(line + (f"  error: {o.error}" if o.error else ""))
            failed += o.status == IntegrationStatus.ERROR
        if not outcomes:
            print("nothing to sync (no active integration is free)", file=sys.stderr)
        return 1 if failed else 0

    return asyncio.run(go())


def register(sub: Any) -> None:
    """Adds ``integrations`` and ``sync`` to the ``flow`` command."""
    integ = sub.add_parser(
        "integrations", help="exports: PostHog and Mixpanel analytics, Stripe billing"
    )
    isub = integ.add_subparsers(dest="integrations_command", required=True)
    add = isub.add_parser("add", help="validate credentials and add an integration")
    add.add_argument("provider", choices=list(PROVIDERS))
    scope = add.add_mutually_exclusive_group()
    scope.add_argument(
        "--key", "--key-id", dest="key", help="export this key's usage (its id, prefix or name)"
    )
    scope.add_argument("--all-keys", action="store_true", help="export every key's usage")
    add.add_argument("--name")
    for field, text in _DESTINATION_OPTIONS.items():
        add.add_argument("--" + field.replace("_", "-"), help=text)
    add.add_argument("--sync-interval-seconds", type=int)
    add.add_argument("--backfill", default="none", help="none | all | N (days) | YYYY-MM-DD")
    add.add_argument("--event-name")
    add.add_argument("--distinct-id", choices=["source", "end_user"])
    add.set_defaults(func=cmd_add)
    ls = isub.add_parser("list", help="list integrations with their status")
    ls.add_argument(
        "--key",
        "--key-id",
        dest="key",
        default=None,
        help="only this key's (its id, prefix or name)",
    )
    ls.set_defaults(func=cmd_list)
    for action in _BY_ID:
        p = isub.add_parser(action, help=f"{action} an integration")
        p.add_argument("id")
        p.set_defaults(func=_by_id(action))
    sync = sub.add_parser("sync", help="run one export cycle of every active integration now")
    sync.add_argument("id", nargs="*", help="only these integrations")
    sync.set_defaults(func=cmd_sync)
