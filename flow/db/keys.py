"""``api_keys``: local keys (sha256 of the secret) and Unkey keys (by Unkey keyId)."""

from __future__ import annotations

import hashlib
import secrets
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


async def revoke_key(sb: AsyncClient, key_id_or_prefix: str) -> list[dict[str, Any]]:
    """Deactivate a key by id or by its printed prefix; returns the revoked rows."""
    query = sb.table("api_keys").update(
        {"is_active": False, "revoked_at": datetime.now(UTC).isoformat()}
    )
    try:
        UUID(key_id_or_prefix)
        query = query.eq("id", key_id_or_prefix)
    except ValueError:
        query = query.eq("key_prefix", key_id_or_prefix)
    res = await call(lambda: query.eq("is_active", True).execute())
    return rows_of(res)


async def list_keys(sb: AsyncClient) -> list[dict[str, Any]]:
    res = await call(
        lambda: (
            sb.table("api_keys")
            .select("id,name,owner,key_prefix,unkey_key_id,is_active,created_at,last_used_at")
            .order("created_at")
            .execute()
        )
    )
    return rows_of(res)
