"""``operator_tokens``: the credentials of the people running Flow (the console, the
admin API), separate from customers' API keys. Only a token's sha256 is stored; a
token is revoked, never deleted.

A token is named the way keys are: by its id, its printed prefix (``flow_op_abc123``)
or its name.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any
from uuid import UUID

from postgrest.types import ReturnMethod
from supabase import AsyncClient

from flow.db.client import call, first_of, rows_of
from flow.db.keys import LAST_USED_RESOLUTION, _quoted, hash_key, the_one

TOKEN_PREFIX = "flow_op_"
TABLE = "operator_tokens"
COLUMNS = "id,name,token_prefix,is_active,created_at,last_used_at,revoked_at"


def new_token_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


async def create_token(sb: AsyncClient, name: str) -> tuple[dict[str, Any], str]:
    """Create an operator token; returns its row and the plaintext (shown once)."""
    plaintext = new_token_secret()
    row = {
        "name": name,
        "token_hash": hash_key(plaintext),
        "token_prefix": plaintext[: len(TOKEN_PREFIX) + 6],
    }
    res = await call(lambda: sb.table(TABLE).insert(row).execute())
    created = rows_of(res)[0]
    return {k: created[k] for k in COLUMNS.split(",")}, plaintext


async def find_active_token(sb: AsyncClient, plaintext: str) -> dict[str, Any] | None:
    """The active token with this plaintext, or None (one indexed lookup)."""
    res = await call(
        lambda: (
            sb.table(TABLE)
            .select(COLUMNS)
            .eq("token_hash", hash_key(plaintext))
            .eq("is_active", True)
            .limit(1)
            .execute()
        )
    )
    return first_of(res)


async def find_tokens(sb: AsyncClient, ident: str) -> list[dict[str, Any]]:
    """Every token named by ``ident``: its id, its printed prefix or its name."""
    try:
        UUID(ident)
        query = sb.table(TABLE).select(COLUMNS).eq("id", ident)
    except ValueError:
        query = (
            sb.table(TABLE)
            .select(COLUMNS)
            .or_(f"token_prefix.eq.{_quoted(ident)},name.eq.{_quoted(ident)}")
        )
    return rows_of(await call(lambda: query.order("created_at").execute()))


async def revoke_token(sb: AsyncClient, ident: str) -> list[dict[str, Any]]:
    """Deactivate the one token named by ``ident``; returns the revoked rows (none when
    it was already revoked). Raises :class:`KeyNotFound` or :class:`AmbiguousKey`."""
    token = the_one(
        await find_tokens(sb, ident), ident, "operator token", itemgetter("token_prefix")
    )
    res = await call(
        lambda: (
            sb.table(TABLE)
            .update({"is_active": False, "revoked_at": datetime.now(UTC).isoformat()})
            .eq("id", str(token["id"]))
            .eq("is_active", True)
            .execute()
        )
    )
    return rows_of(res)


async def list_tokens(sb: AsyncClient) -> list[dict[str, Any]]:
    res = await call(lambda: sb.table(TABLE).select(COLUMNS).order("created_at").execute())
    return rows_of(res)


async def touch_last_used(sb: AsyncClient, token_id: str) -> None:
    """Keep ``last_used_at`` current to the minute (at most one write a minute)."""
    now = datetime.now(UTC)
    stale = (now - LAST_USED_RESOLUTION).strftime("%Y-%m-%dT%H:%M:%SZ")
    await call(
        lambda: (
            sb.table(TABLE)
            .update({"last_used_at": now.isoformat()}, returning=ReturnMethod.minimal)
            .eq("id", token_id)
            .or_(f"last_used_at.is.null,last_used_at.lt.{stale}")
            .execute()
        )
    )
