"""The second half of a sync cycle: corrections after the ledger.

``flow reprice`` prices events recorded unpriced and records one correction each
(``usage_corrections``). Every destination gets the original event as it was recorded
(the cycle sends an event that has a correction with no cost) and each correction once,
as an event of its own: the same shape as a ledger row, its own id (so PostHog's uuid,
Mixpanel's $insert_id and Stripe's identifier are new), no counts, the cost, and
``corrects``: the original's id. Corrections are read after a cursor of their own, as
commit-safe as the ledger's, once the ledger is caught up.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from flow.db import corrections as corrections_db
from flow.db.integrations import IntegrationStatus
from flow.exporters.base import Destination, SendResult

if TYPE_CHECKING:
    from flow.exporters.lease import Lease
    from flow.exporters.sync import Exporter


async def as_recorded(exporter: Exporter, rows: list[dict[str, Any]]) -> None:
    """Rows that were repriced go out as they were recorded: without a cost (their
    correction carries it)."""
    priced = [str(r["id"]) for r in rows if r.get("cost_usd") is not None]
    if not priced:
        return
    repriced = await corrections_db.corrected(exporter.sb, priced)
    for row in rows:
        if str(row["id"]) in repriced:
            row["cost_usd"] = None


async def send_corrections(
    exporter: Exporter,
    lease: Lease,
    dest: Destination,
    created_at: datetime,
    report: Callable[[str, SendResult], str | None],
) -> tuple[SendResult, str | None]:
    """Send the corrections after the integration's correction cursor; returns what was
    sent and the status (None: the lease was lost)."""
    sent = SendResult()
    page_size = min(exporter.page_size, dest.max_batch)
    while True:
        page = await corrections_db.correction_page(exporter.sb, lease.iid, lease.owner, page_size)
        if not page.leased:
            return sent, page.status
        if page.scanned == 0:
            return sent, IntegrationStatus.SYNCING
        result = await exporter._deliver(lease, dest, page.rows, created_at)
        status = await lease.move(page, result, report(lease.iid, result), corrections=True)
        if status is None:
            return sent, None
        sent.add(result)
        if status != IntegrationStatus.SYNCING or page.scanned < page_size:
            return sent, status
