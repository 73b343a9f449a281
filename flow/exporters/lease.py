"""One integration's lease, held by this instance for one sync cycle.

A claim (``analytics_export_claim``) gives this instance the integration until the lease
expires; every page sent moves its cursor and renews the lease in one statement, every
retry renews it, and the cycle ends by releasing it (status, error, next sync). Another
instance may take an expired lease: from then on every call here answers that the lease
was lost, and this instance stops without writing anything more.

Failure behaviour: a lost lease, or an integration paused or deleted meanwhile, raises
:class:`CycleStop` from :meth:`Lease.advance` and :meth:`Lease.renew`. A release that
cannot reach the database is logged and left to expire (the next cycle resumes from the
cursor); other database errors propagate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from supabase import AsyncClient

from flow.db import exports as exports_db
from flow.db.client import DatabaseUnavailable
from flow.db.integrations import IntegrationStatus
from flow.exporters.base import SendResult

log = logging.getLogger(__name__)


class CycleStop(Exception):
    """The cycle must stop: the lease was lost (``lease_lost``: another instance holds
    it, so this one must not release it), or the integration was paused or deleted."""

    def __init__(self, reason: str, *, lease_lost: bool) -> None:
        super().__init__(reason)
        self.lease_lost = lease_lost


@dataclass(frozen=True)
class Lease:
    """The lease of integration ``iid`` held by ``owner``, renewed for ``seconds``."""

    sb: AsyncClient
    iid: str
    owner: str
    seconds: int

    async def move(
        self,
        page: exports_db.ExportPage,
        result: SendResult,
        warning: str | None,
        *,
        corrections: bool = False,
    ) -> str | None:
        """Move the ledger's (or the corrections') cursor past a page sent and renew
        the lease; returns the status, or ``None`` when the lease was lost."""
        return await exports_db.advance_cursor(
            self.sb,
            self.iid,
            self.owner,
            page,
            exported=result.accepted,
            skipped=len(result.skipped),
            warning=warning,
            lease_seconds=self.seconds,
            corrections=corrections,
        )

    async def advance(
        self, page: exports_db.ExportPage, result: SendResult, warning: str | None
    ) -> str:
        """:meth:`move` the ledger's cursor; raises :class:`CycleStop` when the lease
        was lost."""
        status = await self.move(page, result, warning)
        if status is None:
            raise CycleStop(
                "lease lost: another instance took over this integration", lease_lost=True
            )
        return status

    async def renew(self) -> None:
        """Renew the lease (during retries); raises :class:`CycleStop` when it was lost
        or the integration is no longer syncing."""
        status = await exports_db.renew_lease(
            self.sb, self.iid, self.owner, lease_seconds=self.seconds
        )
        if status is None:
            raise CycleStop("lease lost while retrying", lease_lost=True)
        if status != IntegrationStatus.SYNCING:
            raise CycleStop(f"integration is now {status}", lease_lost=False)

    async def release(
        self,
        status: str,
        error: str | None,
        *,
        synced: bool,
        retry_in_seconds: int | None = None,
    ) -> str | None:
        """End the cycle: the integration's status and error, and when it runs next
        (``retry_in_seconds``, or its interval when ``synced``); returns the status it
        was left in, ``None`` when the database could not be reached."""
        try:
            return await exports_db.release_lease(
                self.sb,
                self.iid,
                self.owner,
                status=status,
                error=error,
                synced=synced,
                retry_in_seconds=retry_in_seconds,
            )
        except DatabaseUnavailable as exc:
            log.warning(
                "export %s: could not release the lease (it will expire): %s", self.iid, exc
            )
            return None
