"""Who each key is billed as: ``api_keys.stripe_customer_id``, the Stripe customer the
``stripe`` export sends a key's usage to (keys without one are not billed there).

Failure behaviour: errors from the database surface as :class:`DatabaseError` or
:class:`DatabaseUnavailable` (see :mod:`flow.db.client`); a customer id that is not
``cus_`` and letters or digits is refused by the database's check.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from supabase import AsyncClient

from flow.db.client import call, rows_of


async def set_stripe_customer(sb: AsyncClient, key_id: str, customer_id: str | None) -> bool:
    """Bill the key as ``customer_id`` (None: no longer billed in Stripe); returns
    whether the key exists."""
    res = await call(
        lambda: (
            sb.table("api_keys")
            .update({"stripe_customer_id": customer_id})
            .eq("id", key_id)
            .execute()
        )
    )
    return bool(rows_of(res))


BILLING_COLUMNS = "id,characters,audio_seconds::text"


async def billing_details(sb: AsyncClient, ledger_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """What billing reads of these ledger rows beyond an export page (TTS characters,
    STT seconds as text), by ledger id."""
    wanted = sorted({str(i) for i in ledger_ids})
    if not wanted:
        return {}
    res = await call(
        lambda: sb.table("usage_events").select(BILLING_COLUMNS).in_("id", wanted).execute()
    )
    return {str(r.pop("id")): r for r in rows_of(res)}


async def stripe_customers(sb: AsyncClient, key_ids: Iterable[str] | None = None) -> dict[str, str]:
    """``{api_key_id: stripe_customer_id}`` of the keys that have one (of ``key_ids``
    when given, else of every key)."""
    query = (
        sb.table("api_keys").select("id,stripe_customer_id").not_.is_("stripe_customer_id", "null")
    )
    if key_ids is not None:
        wanted = sorted({str(k) for k in key_ids})
        if not wanted:
            return {}
        query = query.in_("id", wanted)
    return {
        str(r["id"]): str(r["stripe_customer_id"])
        for r in rows_of(await call(lambda: query.execute()))
    }
