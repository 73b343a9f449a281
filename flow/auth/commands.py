"""``flow keys create|revoke|list`` (local API keys) and ``flow admin-token
create|revoke|list`` (operator tokens for the console and ``/api/admin/``).

``create`` prints the key or token on its last line (only its sha256 is stored, so it
is shown once); ``revoke`` takes its id, printed prefix or name.

Failure behaviour: a name that matches none (or several) prints ``error: ...`` and
exits 1 (:class:`flow.db.keys.IdentError`, printed by ``flow``); one already revoked
exits 1 too.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from flow.db import keys, operators
from flow.db.client import connect


def _created(what: str, row: dict[str, Any], prefix: str, plaintext: str) -> int:
    print(f"created {what} {row['id']} ({prefix}...) named {row['name']!r}")
    print("store it now, it is not shown again:", file=sys.stderr)
    print(plaintext)
    return 0


def _revoked(what: str, ident: str, revoked: list[dict[str, Any]]) -> int:
    if not revoked:
        print(f"the {what} {ident!r} is already revoked", file=sys.stderr)
        return 1
    for row in revoked:
        print(f"revoked {what} {row['id']} ({row['name']})")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    async def go() -> int:
        row, plaintext = await keys.create_local_key(await connect(), args.name, args.owner)
        return _created("key", row, row["key_prefix"], plaintext)

    return asyncio.run(go())


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    async def go() -> int:
        return _revoked("key", args.key, await keys.revoke_key(await connect(), args.key))

    return asyncio.run(go())


def cmd_keys_list(args: argparse.Namespace) -> int:
    from flow.workflows.budget_commands import budget_states, describe

    async def go() -> int:
        sb = await connect()
        budgets = await budget_states(sb)
        for row in await keys.list_keys(sb):
            state = "active" if row["is_active"] else "revoked"
            ident = row["key_prefix"] or row["unkey_key_id"]
            print(f"{row['id']}  {ident:<16}  {state:<8}  {row['name']}")
            if str(row["id"]) in budgets:
                print(f"    budget: {describe(budgets[str(row['id'])])}")
        return 0

    return asyncio.run(go())


def register_keys(sub: Any) -> Any:
    """Adds ``keys`` to the ``flow`` command; returns its subcommands, for the ones other
    packages add (a Stripe customer, a budget)."""
    keys_cmd = sub.add_parser("keys", help="manage local API keys (when Unkey is not used)")
    keys_sub = keys_cmd.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True)
    create.add_argument("--owner", default=None)
    create.set_defaults(func=cmd_keys_create)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by id, prefix or name")
    revoke.add_argument("key", help="the key's id, printed prefix or name (a unique one)")
    revoke.set_defaults(func=cmd_keys_revoke)
    keys_sub.add_parser("list", help="list keys (and their budgets)").set_defaults(
        func=cmd_keys_list
    )
    return keys_sub


def cmd_create(args: argparse.Namespace) -> int:
    async def go() -> int:
        row, plaintext = await operators.create_token(await connect(), args.name)
        return _created("operator token", row, row["token_prefix"], plaintext)

    return asyncio.run(go())


def cmd_revoke(args: argparse.Namespace) -> int:
    async def go() -> int:
        revoked = await operators.revoke_token(await connect(), args.token)
        return _revoked("operator token", args.token, revoked)

    return asyncio.run(go())


def cmd_list(args: argparse.Namespace) -> int:
    async def go() -> int:
        for row in await operators.list_tokens(await connect()):
            state = "active" if row["is_active"] else "revoked"
            used = row["last_used_at"] or "never used"
            print(f"{row['id']}  {row['token_prefix']:<16}  {state:<8}  {row['name']}  ({used})")
        return 0

    return asyncio.run(go())


def register(sub: Any) -> None:
    """Adds ``admin-token`` to the ``flow`` command."""
    admin = sub.add_parser(
        "admin-token", help="operator tokens: the console and /api/admin/ (every key's data)"
    )
    asub = admin.add_subparsers(dest="admin_token_command", required=True)
    create = asub.add_parser("create", help="create an operator token and print it once")
    create.add_argument("--name", required=True, help="who holds it")
    create.set_defaults(func=cmd_create)
    revoke = asub.add_parser("revoke", help="revoke an operator token by id, prefix or name")
    revoke.add_argument("token", help="the token's id, printed prefix or name (a unique one)")
    revoke.set_defaults(func=cmd_revoke)
    asub.add_parser("list", help="list operator tokens").set_defaults(func=cmd_list)
