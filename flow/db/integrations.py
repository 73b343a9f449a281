"""``analytics_integrations``: one row per export to an analytics destination.

Reads return the public columns (never ``credentials_encrypted``) unless the name says
otherwise. ``api_key_id`` scopes every call: a key sees and changes its own
integrations only; ``None`` (operators) reaches every row. A row outside the scope
reads as missing (``None``/``False``), exactly like a row that does not exist.

Failure behaviour: errors from the database surface as :class:`DatabaseError` or
:class:`DatabaseUnavailable` (see :mod:`flow.db.client`); nothing is retried here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from supabase import AsyncClient

from flow.db.client import call, first_of, rows_of

TABLE = "analytics_integrations"


class IntegrationStatus(StrEnum):
    """``analytics_integrations.status`` (the SQL check lists the same values)."""

    ACTIVE = "active"  # syncs when due
    SYNCING = "syncing"  # a cycle holds its lease
    PAUSED = "paused"  # stopped by its owner
    ERROR = "error"  # the destination refused the credentials (or the URL): fix, then resume


PUBLIC_COLUMNS = (
    "id,name,provider,api_key_id,all_keys,settings,credentials_hint,status,"
    "sync_interval_seconds,backfill_from,cursor_txid,cursor_seq,last_synced_at,next_sync_at,"
    "last_error,last_warning,events_exported,events_skipped,created_at,updated_at"
)


def _scoped(query: Any, api_key_id: str | None) -> Any:
    return query.eq("api_key_id", api_key_id) if api_key_id is not None else query


async def create_integration(
    sb: AsyncClient, row: dict[str, Any], *, start_now: bool
) -> dict[str, Any]:
    """Insert an integration; with ``start_now`` its cursor starts at the current export
    horizon (``analytics_export_start_now``), so only usage from now on is exported.
    Returns the public row."""
    created = first_of(await call(sb.table(TABLE).insert(row).execute))
    assert created is not None
    if start_now:
        await call(sb.rpc("analytics_export_start_now", {"p_id": created["id"]}).execute)
    found = await get_integration(sb, created["id"], api_key_id=None)
    assert found is not None
    return found


async def get_integration(
    sb: AsyncClient, integration_id: str, *, api_key_id: str | None
) -> dict[str, Any] | None:
    q = sb.table(TABLE).select(PUBLIC_COLUMNS).eq("id", integration_id)
    return first_of(await call(_scoped(q, api_key_id).limit(1).execute))


async def get_integration_with_credentials(
    sb: AsyncClient, integration_id: str, *, api_key_id: str | None
) -> dict[str, Any] | None:
    """The whole row, ``credentials_encrypted`` included (to edit the credentials)."""
    q = sb.table(TABLE).select("*").eq("id", integration_id)
    return first_of(await call(_scoped(q, api_key_id).limit(1).execute))


async def list_integrations(sb: AsyncClient, *, api_key_id: str | None) -> list[dict[str, Any]]:
    q = sb.table(TABLE).select(PUBLIC_COLUMNS).order("created_at")
    return rows_of(await call(_scoped(q, api_key_id).execute))


async def update_columns(
    sb: AsyncClient, integration_id: str, values: dict[str, Any], *, api_key_id: str | None
) -> dict[str, Any] | None:
    """Set the named columns; returns the public row, or ``None`` if out of scope."""
    q = sb.table(TABLE).update(values).eq("id", integration_id)
    if not rows_of(await call(_scoped(q, api_key_id).execute)):
        return None
    return await get_integration(sb, integration_id, api_key_id=api_key_id)


async def pause_integration(
    sb: AsyncClient, integration_id: str, *, api_key_id: str | None
) -> dict[str, Any] | None:
    # A cycle in flight sees the new status at its next page and stops.
    return await update_columns(
        sb, integration_id, {"status": IntegrationStatus.PAUSED}, api_key_id=api_key_id
    )


async def resume_integration(
    sb: AsyncClient, integration_id: str, *, api_key_id: str | None
) -> dict[str, Any] | None:
    """Active again, error cleared, due at once."""
    return await update_columns(
        sb,
        integration_id,
        {
            "status": IntegrationStatus.ACTIVE,
            "last_error": None,
            "next_sync_at": datetime.now(UTC).isoformat(),
        },
        api_key_id=api_key_id,
    )


async def request_sync(
    sb: AsyncClient, integration_id: str, *, api_key_id: str | None
) -> dict[str, Any] | None:
    """Make the integration due now; a scheduler claims it at its next tick. The
    database counts the request (``analytics_request_sync``), so a request made while a
    cycle runs is not served by that cycle but makes exactly one more right after it.
    Returns the public row, or ``None`` if out of scope."""
    params = {"p_id": integration_id, "p_api_key_id": api_key_id}
    res: Any = await call(sb.rpc("analytics_request_sync", params).execute)
    if res.data is not True:
        return None
    return await get_integration(sb, integration_id, api_key_id=api_key_id)


async def delete_integration(
    sb: AsyncClient, integration_id: str, *, api_key_id: str | None
) -> bool:
    q = sb.table(TABLE).delete().eq("id", integration_id)
    return bool(rows_of(await call(_scoped(q, api_key_id).execute)))
