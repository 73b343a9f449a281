"""``api_keys``: local keys (sha256 of the secret) and Unkey keys (by Unkey keyId)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from postgrest.types import ReturnMethod
from supabase import AsyncClient

from flow.db.client import DatabaseError, call, first_of, rows_of

KEY_PREFIX = "flow_sk_"
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def new_key_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


async def create_local_key(
    sb: AsyncClient, name: str, owner: str | None = None
) -> tuple[dict[str, Any], str]:
    """Create a local key; returns its row and the plaintext (shown once, never stored)."""
    plaintext = new_key_secret()
    row = {
        "name": name,
        "owner": owner,
        "key_hash": hash_key(plaintext),
        "key_prefix": plaintext[: len(KEY_PREFIX) + 6],
    }
    res = await call(lambda: sb.table("api_keys").insert(row).execute())
    return rows_of(res)[0], plaintext


async def find_active_local_key(sb: AsyncClient, plaintext: str) -> dict[str, Any] | None:
    res = await call(
        lambda: (
            sb.table("api_keys")
            .select("id,name,owner,is_active,last_used_at")
            .eq("key_hash", hash_key(plaintext))
            .eq("is_active", True)
            .limit(1)
            .execute()
        )
    )
    return first_of(res)


async def get_or_create_unkey_key(
    sb: AsyncClient, unkey_key_id: str, name: str | None, owner: str | None
) -> dict[str, Any]:
    """Map an Unkey keyId to our uuid, creating the row the first time it is seen."""

    async def find() -> dict[str, Any] | None:
        res = await call(
            lambda: (
                sb.table("api_keys")
                .select("id,name,owner,is_active,last_used_at")
                .eq("unkey_key_id", unkey_key_id)
                .limit(1)
                .execute()
            )
        )
        return first_of(res)

    found = await find()
    if found:
        return found
    await call(
        lambda: (
            sb.table("api_keys")
            .upsert(
                {"unkey_key_id": unkey_key_id, "name": name or unkey_key_id, "owner": owner},
                on_conflict="unkey_key_id",
                ignore_duplicates=True,
            )
            .execute()
        )
    )
    created = await find()
    if created is None:  # pragma: no cover - the upsert above guarantees the row
        raise DatabaseError(f"could not create the key row for {unkey_key_id}")
    return created


async def touch_last_used(sb: AsyncClient, key_id: UUID | str) -> None:
    """Keep ``last_used_at`` current to the minute: at most one write per key a minute."""
    now = datetime.now(UTC)
    stale = (now - LAST_USED_RESOLUTION).strftime("%Y-%m-%dT%H:%M:%SZ")
    await call(
        lambda: (
            sb.table("api_keys")
            .update({"last_used_at": now.isoformat()}, returning=ReturnMethod.minimal)
            .eq("id", str(key_id))
            .or_(f"last_used_at.is.null,last_used_at.lt.{stale}")
            .execute()
        )
    )


KEY_COLUMNS = "id,name,owner,key_prefix,unkey_key_id,is_active,created_at,last_used_at"


class IdentError(LookupError):
    """An id, prefix or name given on the command line names no row, or several; the
    ``flow`` command prints the message and exits 1."""


class KeyNotFound(IdentError):
    """No key (or operator token) answers to the given id, prefix or name."""


class AmbiguousKey(IdentError):
    """Several keys (or operator tokens) answer to the given name; the message lists them."""


def _no_match(what: str, ident: str) -> str:
    return f"no {what} matches {ident!r} (give its id, prefix or name)"


def the_one(
    found: list[dict[str, Any]], ident: str, what: str, label: Callable[[dict[str, Any]], Any]
) -> dict[str, Any]:
    """The one row of ``found`` (the ``what`` named by ``ident``); raises
    :class:`KeyNotFound` or :class:`AmbiguousKey` (listing each row's id and ``label``)."""
    if not found:
        raise KeyNotFound(_no_match(what, ident))
    if len(found) > 1:
        listed = ", ".join(f"{r['id']} ({label(r)})" for r in found)
        raise AmbiguousKey(f"{len(found)} {what}s match {ident!r}: {listed}; give the id")
    return found[0]


async def find_keys(sb: AsyncClient, ident: str) -> list[dict[str, Any]]:
    """Every key named by ``ident``: an ``api_keys.id``, a printed prefix, an Unkey key
    id or a name (names need not be unique). Every ``flow keys`` command, ``flow usage``
    and ``flow integrations`` name keys this way."""
    try:
        UUID(ident)
        query = sb.table("api_keys").select(KEY_COLUMNS).eq("id", ident)
    except ValueError:
        query = (
            sb.table("api_keys")
            .select(KEY_COLUMNS)
            .or_(
                f"key_prefix.eq.{_quoted(ident)},unkey_key_id.eq.{_quoted(ident)},"
                f"name.eq.{_quoted(ident)}"
            )
        )
    res = await call(lambda: query.order("created_at").execute())
    return rows_of(res)


async def keys_named(sb: AsyncClient, ident: str) -> list[dict[str, Any]]:
    """Every key named by ``ident`` (a report reads each key a shared name names);
    raises :class:`KeyNotFound` when none is."""
    found = await find_keys(sb, ident)
    if not found:
        raise KeyNotFound(_no_match("key", ident))
    return found


async def resolve_key(sb: AsyncClient, ident: str) -> dict[str, Any]:
    """The one key named by ``ident`` (see :func:`find_keys`); raises
    :class:`KeyNotFound` or :class:`AmbiguousKey`."""
    found = await find_keys(sb, ident)
    return the_one(found, ident, "key", lambda r: r["key_prefix"] or r["unkey_key_id"])


def _quoted(value: str) -> str:
    """A PostgREST filter value in double quotes (names may hold commas or dots)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def revoke_key(sb: AsyncClient, ident: str) -> list[dict[str, Any]]:
    """Deactivate the key named by ``ident`` (id, prefix or name; see
    :func:`resolve_key`); returns the revoked rows (none when it was already revoked)."""
    key = await resolve_key(sb, ident)
    res = await call(
        lambda: (
            sb.table("api_keys")
            .update({"is_active": False, "revoked_at": datetime.now(UTC).isoformat()})
            .eq("id", str(key["id"]))
            .eq("is_active", True)
            .execute()
        )
    )
    return rows_of(res)


async def list_keys(sb: AsyncClient) -> list[dict[str, Any]]:
    res = await call(lambda: sb.table("api_keys").select(KEY_COLUMNS).order("created_at").execute())
    return rows_of(res)
