"""``flow integrations add|list|pause|resume|remove`` and ``flow sync``: the operator's
side of analytics exports (any key's integrations, or ``--all-keys`` for everything).

``flow sync`` runs one cycle of every active integration now, whatever its schedule,
with a progress bar on stderr for backfills.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from pydantic import TypeAdapter, ValidationError

from flow.config import get_settings
from flow.exporters import integrations as repo


async def _client() -> Any:
    from flow.db.client import create_client

    return await create_client(get_settings())


def _body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"provider": args.provider}
    backfill: Any = args.backfill
    if backfill.isdigit():
        backfill = {"days": int(backfill)}
    elif backfill not in ("none", "all"):
        backfill = {"from": backfill}
    for name in (
        "name",
        "region",
        "host",
        "api_host",
        "project_api_key",
        "project_token",
        "api_secret",
        "event_name",
        "distinct_id",
        "sync_interval_seconds",
    ):
        value = getattr(args, name, None)
        if value is not None:
            body[name] = value
    body["backfill"] = backfill
    if args.service_account:
        username, _, rest = args.service_account.partition(":")
        secret, _, project_id = rest.rpartition("@")
        body["service_account"] = {"username": username, "secret": secret, "project_id": project_id}
    return body


def cmd_add(args: argparse.Namespace) -> int:
    async def go() -> int:
        if not args.all_keys and not args.key_id:
            print("error: give --key-id KEY_UUID or --all-keys", file=sys.stderr)
            return 2
        try:
            body = TypeAdapter(repo.IntegrationCreate).validate_python(_body(args))
        except ValidationError as exc:
            print(f"error: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}", file=sys.stderr)
            return 2
        try:
            row = await repo.create_integration(
                await _client(),
                get_settings(),
                body,
                api_key_id=args.key_id,
                all_keys=args.all_keys,
            )
        except (repo.CredentialsInvalid, repo.IntegrationInputError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(repo.public_view(row), indent=2, default=str))
        return 0

    return asyncio.run(go())


def cmd_list(args: argparse.Namespace) -> int:
    async def go() -> int:
        for row in await repo.list_integrations(await _client(), api_key_id=args.key_id):
            v = repo.public_view(row)
            scope = "all keys" if v["all_keys"] else v["api_key_id"]
            print(
                f"{v['id']}  {v['provider']:<8}  {v['status']:<7}  exported={v['events_exported']}"
                f"  skipped={v['events_skipped']}  last_sync={v['last_synced_at']}  {scope}"
                + (f"\n    last error: {v['last_error']}" if v["last_error"] else "")
                + (f"\n    warning: {v['last_warning']}" if v["last_warning"] else "")
            )
        return 0

    return asyncio.run(go())


def _by_id(action: str) -> Any:
    def cmd(args: argparse.Namespace) -> int:
        async def go() -> int:
            sb = await _client()
            if action == "remove":
                done: Any = await repo.delete_integration(sb, args.id, api_key_id=None)
            elif action == "pause":
                done = await repo.pause_integration(sb, args.id, api_key_id=None)
            else:
                done = await repo.resume_integration(sb, args.id, api_key_id=None)
            if not done:
                print(f"no integration {args.id}", file=sys.stderr)
                return 1
            print(f"{action}d {args.id}" if action != "pause" else f"paused {args.id}")
            return 0

        return asyncio.run(go())

    return cmd


def cmd_sync(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from flow.exporters.sync import Exporter

    async def go() -> int:
        exporter = Exporter(await _client(), get_settings())
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
            failed += o.status == "error"
        if not outcomes:
            print("nothing to sync (no active integration is free)", file=sys.stderr)
        return 1 if failed else 0

    return asyncio.run(go())


def register(sub: Any) -> None:
    """Adds ``integrations`` and ``sync`` to the ``flow`` command."""
    integ = sub.add_parser("integrations", help="analytics exports to PostHog and Mixpanel")
    isub = integ.add_subparsers(dest="integrations_command", required=True)
    add = isub.add_parser("add", help="validate credentials and add an integration")
    add.add_argument("provider", choices=["posthog", "mixpanel"])
    scope = add.add_mutually_exclusive_group()
    scope.add_argument("--key-id", help="export this API key's usage (api_keys.id)")
    scope.add_argument("--all-keys", action="store_true", help="export every key's usage")
    add.add_argument("--name")
    add.add_argument("--region", help="posthog: us|eu; mixpanel: us|eu|in")
    add.add_argument("--host", help="PostHog host (self-hosted or a proxy)")
    add.add_argument("--api-host", help="Mixpanel API host (a proxy)")
    add.add_argument("--project-api-key", help="PostHog project API key (phc_...)")
    add.add_argument("--project-token", help="Mixpanel project token")
    add.add_argument("--api-secret", help="Mixpanel API secret (enables /import)")
    add.add_argument("--service-account", help="Mixpanel USER:SECRET@PROJECT_ID (enables /import)")
    add.add_argument("--sync-interval-seconds", type=int)
    add.add_argument("--backfill", default="none", help="none | all | N (days) | YYYY-MM-DD")
    add.add_argument("--event-name")
    add.add_argument("--distinct-id", choices=["source", "end_user"])
    add.set_defaults(func=cmd_add)
    ls = isub.add_parser("list", help="list integrations with their status")
    ls.add_argument("--key-id", default=None)
    ls.set_defaults(func=cmd_list)
    for action in ("pause", "resume", "remove"):
        p = isub.add_parser(action, help=f"{action} an integration")
        p.add_argument("id")
        p.set_defaults(func=_by_id(action))
    sync = sub.add_parser("sync", help="run one export cycle of every active integration now")
    sync.add_argument("id", nargs="*", help="only these integrations")
    sync.set_defaults(func=cmd_sync)
