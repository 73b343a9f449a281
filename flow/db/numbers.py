"""``phone_numbers``: the numbers Flow answers, each owned by the API key that pays for
its calls, with the configuration of its bot (``config``, a JSON object).

A number is stored in E.164 (``+15550001111``), unique across keys. A number whose key
is revoked answers no calls: :func:`find_answering` skips it.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from supabase import AsyncClient

from flow.db.client import DatabaseError, call, first_of, rows_of

NUMBER_COLUMNS = "id,number,api_key_id,config,created_at,updated_at"
UNIQUE_VIOLATION = "23505"


class NumberTaken(ValueError):
    """The number is already routed (to this key or another)."""


async def add_number(
    sb: AsyncClient, number: str, api_key_id: UUID | str, config: dict[str, Any]
) -> dict[str, Any]:
    """Route ``number`` to a key; raises :class:`NumberTaken` when it is routed already."""
    row = {"number": number, "api_key_id": str(api_key_id), "config": config}
    try:
        res = await call(lambda: sb.table("phone_numbers").insert(row).execute())
    except DatabaseError as exc:
        if exc.code == UNIQUE_VIOLATION:
            raise NumberTaken(f"{number} is already routed; remove it first") from None
        raise
    return rows_of(res)[0]


async def list_numbers(sb: AsyncClient) -> list[dict[str, Any]]:
    """Every routed number with its key's name, oldest first."""
    res = await call(
        lambda: (
            sb.table("phone_numbers")
            .select(f"{NUMBER_COLUMNS},api_keys(name,is_active)")
            .order("created_at")
            .execute()
        )
    )
    return rows_of(res)


async def remove_number(sb: AsyncClient, number: str) -> bool:
    """Stop routing ``number``; False when it was not routed."""
    res = await call(lambda: sb.table("phone_numbers").delete().eq("number", number).execute())
    return bool(rows_of(res))


async def find_answering(sb: AsyncClient, number: str) -> dict[str, Any] | None:
    """The routed number, when its key is active; None otherwise."""
    res = await call(
        lambda: (
            sb.table("phone_numbers")
            .select(f"{NUMBER_COLUMNS},api_keys!inner(is_active)")
            .eq("number", number)
            .eq("api_keys.is_active", True)
            .limit(1)
            .execute()
        )
    )
    return first_of(res)
