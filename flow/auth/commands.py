"""``flow admin-token create|revoke|list``: operator tokens for the console and
``/api/admin/``.

``create`` prints the token on its last line (only its sha256 is stored, so it is
shown once); ``revoke`` takes the token's id, printed prefix or name.

Failure behaviour: a token that matches none (or several) prints ``error: ...`` and
exits 1; a token already revoked exits 1 too.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from flow.config import get_settings


async def _client() -> Any:
    from flow.db.client import create_client

    return await create_client(get_settings())


def cmd_create(args: argparse.Namespace) -> int:
    from flow.db import operators

    async def go() -> int:
        row, plaintext = await operators.create_token(await _client(), args.name)
        named = f"({row['token_prefix']}...) named {row['name']!r}"
        print(f"created operator token {row['id']} {named}")
        print("store it now, it is not shown again:", file=sys.stderr)
        print(plaintext)
        return 0

    return asyncio.run(go())


def cmd_revoke(args: argparse.Namespace) -> int:
    from flow.db import operators

    async def go() -> int:
        try:
            revoked = await operators.revoke_token(await _client(), args.token)
        except LookupError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if not revoked:
            print(f"the operator token {args.token!r} is already revoked", file=sys.stderr)
            return 1
        for row in revoked:
            print(f"revoked operator token {row['id']} ({row['name']})")
        return 0

    return asyncio.run(go())


def cmd_list(args: argparse.Namespace) -> int:
    from flow.db import operators

    async def go() -> int:
        for row in await operators.list_tokens(await _client()):
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
