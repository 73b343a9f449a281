"""The export cycle's SQL functions: claim integrations under a lease, read a page of the
ledger after an integration's cursor, move the cursor, renew and release the lease.

The migration ``analytics_export`` defines them and explains the cursor (the inserting
transaction and ``seq`` of the last exported row) and the lease. Every call but
:func:`claim_integrations` and :func:`export_backlog` names the lease owner: a call by
an instance that lost its lease changes nothing and says so (``None``, ``leased=False``).

Failure behaviour: errors from the database surface as :class:`DatabaseError` or
:class:`DatabaseUnavailable` (see :mod:`flow.db.client`); nothing is retried here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from supabase import AsyncClient

from flow.db.client import call, rows_of


@dataclass(frozen=True)
class ExportPage:
    """One page of ledger rows after the cursor, as ``analytics_export_page`` returns it.

    Parameters:
        status: the integration's status (``deleted`` when it no longer exists).
        leased: whether the caller still holds the lease; nothing else is set if not.
        scanned: ledger rows the page covers, including those before ``backfill_from``
            (scanned past, not returned).
        rows: the rows to export, money and latency as exact decimal text.
        last_txid, last_seq: the cursor after this page.
    """

    status: str
    leased: bool
    scanned: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    last_txid: str = "0"
    last_seq: int = 0


async def claim_integrations(
    sb: AsyncClient,
    owner: str,
    *,
    lease_seconds: int,
    limit: int,
    force: bool,
    ids: list[str] | None,
    exclude: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Lease integrations that are due (any active one when ``force``, only ``ids`` if
    given, never those in ``exclude``) to ``owner``; returns their whole rows,
    credentials included. The lease records the integration's sync request count, which
    :func:`release_lease` compares to tell a "sync now" made during the cycle."""
    params = {
        "p_owner": owner,
        "p_lease_seconds": lease_seconds,
        "p_limit": limit,
        "p_force": force,
        "p_ids": ids,
        "p_exclude": exclude,
    }
    return rows_of(await call(sb.rpc("analytics_claim_integrations", params).execute))


async def export_backlog(sb: AsyncClient, integration_id: str) -> int:
    """Ledger rows waiting after the integration's cursor."""
    res: Any = await call(sb.rpc("analytics_export_backlog", {"p_id": integration_id}).execute)
    return int(res.data or 0)


async def export_lag(sb: AsyncClient) -> list[dict[str, Any]]:
    """Every integration's lag behind the ledger: ``id``, ``provider``, ``status``,
    ``lag_rows`` (rows after its cursor) and ``lag_seconds`` (since the oldest of them
    was recorded; 0 when caught up)."""
    return rows_of(await call(sb.rpc("analytics_export_lag", {}).execute))


async def export_page(sb: AsyncClient, integration_id: str, owner: str, limit: int) -> ExportPage:
    """Up to ``limit`` ledger rows after the cursor, for the lease holder."""
    return await leased_page(sb, "analytics_export_page", integration_id, owner, limit)


async def leased_page(
    sb: AsyncClient, function: str, integration_id: str, owner: str, limit: int
) -> ExportPage:
    """A page from one of the export cursors' SQL functions (``function``), for the
    lease holder."""
    params = {"p_id": integration_id, "p_owner": owner, "p_limit": limit}
    res: Any = await call(sb.rpc(function, params).execute)
    data: dict[str, Any] = res.data
    if not data.get("leased"):
        return ExportPage(status=str(data.get("status")), leased=False)
    last_txid, last_seq = data["last"] or ("0", 0)
    return ExportPage(
        status=str(data["status"]),
        leased=True,
        scanned=int(data["scanned"]),
        rows=list(data["rows"]),
        last_txid=str(last_txid),
        last_seq=int(last_seq),
    )


async def advance_cursor(
    sb: AsyncClient,
    integration_id: str,
    owner: str,
    page: ExportPage,
    *,
    exported: int,
    skipped: int,
    warning: str | None,
    lease_seconds: int,
    corrections: bool = False,
) -> str | None:
    """Move the cursor past ``page`` (the correction cursor with ``corrections``), add to
    the counters and renew the lease; returns the status, or ``None`` when the lease was
    lost (or the integration deleted)."""
    params = {
        "p_id": integration_id,
        "p_owner": owner,
        "p_txid": page.last_txid,
        "p_seq": page.last_seq,
        "p_exported": exported,
        "p_skipped": skipped,
        "p_warning": warning,
        "p_lease_seconds": lease_seconds,
    }
    rpc = "analytics_correction_advance" if corrections else "analytics_export_advance"
    found = rows_of(await call(sb.rpc(rpc, params).execute))
    return str(found[0]["status"]) if found else None


async def renew_lease(
    sb: AsyncClient, integration_id: str, owner: str, *, lease_seconds: int
) -> str | None:
    """Extend the lease; returns the status, or ``None`` when the lease was lost."""
    params = {"p_id": integration_id, "p_owner": owner, "p_lease_seconds": lease_seconds}
    res: Any = await call(sb.rpc("analytics_export_renew", params).execute)
    return str(res.data) if res.data else None


async def release_lease(
    sb: AsyncClient,
    integration_id: str,
    owner: str,
    *,
    status: str,
    error: str | None,
    synced: bool,
    retry_in_seconds: int | None,
) -> str | None:
    """End a cycle: free the lease, record its outcome and schedule the next one: now
    when a sync was requested after the cycle claimed the integration (the request is
    kept for the next cycle), else after ``retry_in_seconds`` or the sync interval. A
    status a person set meanwhile wins. Returns the status, or ``None`` when the lease
    was already lost."""
    params = {
        "p_id": integration_id,
        "p_owner": owner,
        "p_status": status,
        "p_error": error,
        "p_synced": synced,
        "p_retry_in_seconds": retry_in_seconds,
    }
    res: Any = await call(sb.rpc("analytics_export_release", params).execute)
    return str(res.data) if res.data else None
