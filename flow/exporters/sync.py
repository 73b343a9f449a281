"""The sync cycle: ledger rows after the cursor -> destination -> cursor moved.

:class:`Exporter` claims integrations that are due (an atomic lease in the database, so
two Flow instances never sync the same one at once), then for each: reads a page of rows
after the cursor (``analytics_export_page``, which only returns rows whose transactions
have all finished, see the migration), sends it, and moves the cursor
(``analytics_export_advance``) only after the destination accepted it. A crash between
the two resends the page on the next cycle with the same uuids / $insert_ids. The SQL
functions are called through :mod:`flow.db.exports`; the destination is built by the
integration's :class:`DestinationSpec` (:mod:`flow.exporters.registry`).

Failure behaviour: 429/5xx/network errors back off exponentially (``Retry-After``
honoured) and, once the attempts are spent, end the cycle with the integration still
``active`` and a retry scheduled; 401/403 and other refusals put it in ``error`` with a
fixed reason (the status; a host the outbound-URL policy now refuses is
``url_not_allowed: <rule>``, nothing sent); 413 splits the batch. Rows a destination
refuses on their own (Mixpanel strict mode, too old for /track) are logged with the
reason, counted as skipped, and never resent. A lost lease ends the cycle without
releasing (the new holder owns the row); a pause or deletion seen mid-cycle ends it and
releases the lease. Any other exception (a fault of Flow's own) is logged with its
traceback, ends that integration's cycle with the lease released, ``active``, a retry
scheduled and only the exception's type in ``last_error``; the pass goes on with the
next integration.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from supabase import AsyncClient

from flow import metrics
from flow.config import Settings
from flow.db import billing as billing_db
from flow.db import exports as exports_db
from flow.db.client import DatabaseError, DatabaseUnavailable
from flow.db.integrations import IntegrationStatus
from flow.exporters import corrections
from flow.exporters.base import (
    AuthRejected,
    Destination,
    DestinationError,
    PayloadTooLarge,
    Retryable,
    SendResult,
)
from flow.exporters.crypto import CredentialBox, CredentialsUnreadable, SecretKeyMissing
from flow.exporters.lease import CycleStop, Lease
from flow.exporters.registry import spec_for
from flow.exporters.spec import Stored
from flow.net.outbound import UrlNotAllowed, outbound_client

log = logging.getLogger(__name__)

HTTP_TIMEOUT_SECONDS = 30.0
Progress = Callable[[str, int], None]


@dataclass
class SyncOutcome:
    """The result of one integration's cycle.

    Parameters:
        exported: events the destination accepted in this cycle.
        skipped: rows reported and passed over (refused records, too old for /track).
        status: the integration's status afterwards (as this cycle left it).
        error: why the cycle failed or stopped early, if it did.
    """

    integration_id: str
    exported: int = 0
    skipped: int = 0
    status: str = IntegrationStatus.ACTIVE
    error: str | None = None


class Exporter:
    """Runs sync cycles for one Flow instance (its lease owner id).

    Parameters:
        page_size: rows read (and sent) at a time; at most the destination's batch size.
        lease_seconds: how long a claim lasts without renewal (renewed every page and
            every retry).
        max_attempts: sends tried per batch before the cycle gives up until next time.
        backoff_base_seconds: first retry delay; doubles up to ``backoff_max_seconds``.
    """

    def __init__(
        self,
        sb: AsyncClient,
        settings: Settings,
        *,
        http: httpx.AsyncClient | None = None,
        owner: str | None = None,
        page_size: int = 2000,
        lease_seconds: int = 120,
        max_attempts: int = 6,
        backoff_base_seconds: float = 1.0,
        backoff_max_seconds: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.sb = sb
        self.settings = settings
        self._own_http = http is None
        self.http = http or outbound_client(settings, timeout=HTTP_TIMEOUT_SECONDS)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.page_size = page_size
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.backoff_base_seconds = backoff_base_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self._sleep = sleep
        self._box: CredentialBox | None = None

    async def aclose(self) -> None:
        if self._own_http:
            await self.http.aclose()

    def _credentials(self) -> CredentialBox:
        if self._box is None:
            self._box = CredentialBox.from_settings(self.settings)
        return self._box

    # --- claiming -------------------------------------------------------------
    async def claim(
        self, *, force: bool = False, ids: list[str] | None = None, limit: int = 10
    ) -> list[dict[str, Any]]:
        return await exports_db.claim_integrations(
            self.sb,
            self.owner,
            lease_seconds=self.lease_seconds,
            limit=limit,
            force=force,
            ids=ids,
        )

    async def backlog(self, integration_id: str) -> int:
        return await exports_db.export_backlog(self.sb, integration_id)

    async def run_due(
        self,
        *,
        force: bool = False,
        ids: list[str] | None = None,
        progress: Progress | None = None,
        on_claim: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    ) -> list[SyncOutcome]:
        """Claim what is due (everything active when ``force``) and sync it, one at a
        time, until nothing is left to claim. Each integration runs at most once a pass:
        the claim leaves out those already run, so one that a "sync now" made during its
        cycle keeps due is neither run again here nor released (which would reschedule
        it), and the next pass runs it."""
        outcomes: list[SyncOutcome] = []
        seen: list[str] = []
        while True:
            claimed = await exports_db.claim_integrations(
                self.sb,
                self.owner,
                lease_seconds=self.lease_seconds,
                limit=1,
                force=force,
                ids=ids,
                exclude=seen,
            )
            if not claimed:
                return outcomes
            for row in claimed:
                seen.append(str(row["id"]))
                if on_claim is not None:
                    await on_claim(row)
                outcomes.append(await self.sync_one(row, progress=progress))

    # --- one integration -------------------------------------------------------
    async def sync_one(
        self, row: dict[str, Any], *, progress: Progress | None = None
    ) -> SyncOutcome:
        """Run one cycle for an integration this instance has claimed."""
        iid = str(row["id"])
        lease = Lease(self.sb, iid, self.owner, self.lease_seconds)
        outcome = SyncOutcome(integration_id=iid)
        retry_in: int | None = None
        synced = False
        release = True
        try:
            creds = self._credentials().open(row["credentials_encrypted"])
            stored = Stored(row["settings"] or {}, creds)
            dest = spec_for(row["provider"]).build(
                self.http, stored, self.settings.flow_export_source_id
            )
            created_at = datetime.fromisoformat(str(row["created_at"]))
            page_size = min(self.page_size, dest.max_batch)
            while True:
                page = await exports_db.export_page(self.sb, iid, self.owner, page_size)
                if not page.leased:
                    release = page.status != "deleted"
                    outcome.status = page.status
                    break
                scanned = page.scanned
                if scanned == 0:
                    synced = True
                    break
                rows = page.rows
                await corrections.as_recorded(self, rows)
                result = await self._deliver(lease, dest, rows, created_at)
                status = await lease.advance(page, result, _report_skipped(iid, result))
                outcome.exported += result.accepted
                outcome.skipped += len(result.skipped)
                if progress is not None:
                    progress(iid, scanned)
                if status != IntegrationStatus.SYNCING:
                    outcome.status = status
                    break
                if scanned < page_size:
                    synced = True
                    break
            if synced:
                fixed, after = await corrections.send_corrections(
                    self, lease, dest, created_at, _report_skipped
                )
                outcome.exported += fixed.accepted
                outcome.skipped += len(fixed.skipped)
                if after is None:
                    raise CycleStop("lease lost: another instance took over", lease_lost=True)
                if after != IntegrationStatus.SYNCING:
                    outcome.status = after
        except CycleStop as stop:
            outcome.error = str(stop)
            release = not stop.lease_lost
        except AuthRejected as exc:
            outcome.status, outcome.error = IntegrationStatus.ERROR, str(exc)
        except Retryable as exc:
            outcome.error = f"retrying later: {exc}"
            retry_in = self._retry_later_seconds
        except (DestinationError, CredentialsUnreadable, SecretKeyMissing) as exc:
            outcome.status, outcome.error = IntegrationStatus.ERROR, str(exc)
        except UrlNotAllowed as exc:
            outcome.status, outcome.error = IntegrationStatus.ERROR, f"url_not_allowed: {exc}"
        except (DatabaseUnavailable, DatabaseError) as exc:
            # The lease expires by itself; the next cycle resumes from the cursor. What
            # the database said stays in the log: last_error is shown to the customer.
            log.warning("export %s: database error, will resume: %s", iid, exc)
            outcome.error = (
                "database refused a request, retrying later"
                if isinstance(exc, DatabaseError)
                else "database unavailable, retrying later"
            )
            release = isinstance(exc, DatabaseError)
        except asyncio.CancelledError:
            await asyncio.shield(
                lease.release(IntegrationStatus.ACTIVE, "interrupted", synced=False)
            )
            raise
        except Exception as exc:
            # A fault of Flow's own (a bug): logged with its traceback, kept out of
            # last_error (only its type), the lease released with a backoff so that the
            # cycle resumes from the cursor later and the rest of the pass still runs.
            log.exception("export %s: unexpected error", iid)
            outcome.error = f"internal error ({type(exc).__name__}), retrying later"
            retry_in = self._retry_later_seconds
        if outcome.status == IntegrationStatus.SYNCING:
            outcome.status = IntegrationStatus.ACTIVE
        if release:
            final = await lease.release(
                outcome.status
                if outcome.status in (IntegrationStatus.ACTIVE, IntegrationStatus.ERROR)
                else IntegrationStatus.ACTIVE,
                outcome.error,
                synced=synced,
                retry_in_seconds=retry_in,
            )
            if final:
                outcome.status = final
        if outcome.error:
            metrics.EXPORT_ERRORS.labels(str(row["provider"])).inc()
            log.warning("export %s: %s", iid, outcome.error)
        else:
            log.info("export %s: %d events exported", iid, outcome.exported)
        return outcome

    @property
    def _retry_later_seconds(self) -> int:
        """When a cycle that ended on a fault of its own is tried again."""
        return int(min(self.backoff_max_seconds * 5, 300))

    async def _attach_billing(self, rows: list[dict[str, Any]]) -> None:
        """Who each row's key is billed as (``stripe_customer_id``, None without one),
        and the counts billing reads beyond the page (characters, seconds)."""
        customers = await billing_db.stripe_customers(self.sb, {str(r["api_key_id"]) for r in rows})
        details = await billing_db.billing_details(self.sb, [str(r["id"]) for r in rows])
        for row in rows:
            row.update(details.get(str(row["id"]), {}))
            row["stripe_customer_id"] = customers.get(str(row["api_key_id"]))

    # --- sending ---------------------------------------------------------------
    async def _deliver(
        self, lease: Lease, dest: Destination, rows: list[dict[str, Any]], created_at: datetime
    ) -> SendResult:
        """Send a page in batches of the destination's size. Rows from before the
        integration was created go as historical (Mixpanel's /import); a destination
        that bills customers gets each row's customer and billed counts first."""
        if getattr(dest, "bills_customers", False):
            await self._attach_billing(rows)
        times = (datetime.fromisoformat(str(r["occurred_at"])) for r in rows)
        historical = bool(rows) and min(times) < created_at
        result = SendResult()
        for start in range(0, len(rows), dest.max_batch):
            result.add(
                await self._send(lease, dest, rows[start : start + dest.max_batch], historical)
            )
        return result

    async def _send(
        self, lease: Lease, dest: Destination, rows: list[dict[str, Any]], historical: bool
    ) -> SendResult:
        attempt = 0
        while True:
            try:
                return await dest.send(rows, historical=historical)
            except PayloadTooLarge:
                if len(rows) == 1:
                    return SendResult(skipped=[(str(rows[0]["id"]), "event too large (413)")])
                half = len(rows) // 2
                result = await self._send(lease, dest, rows[:half], historical)
                result.add(await self._send(lease, dest, rows[half:], historical))
                return result
            except Retryable as exc:
                attempt += 1
                if attempt >= self.max_attempts:
                    raise
                delay = exc.retry_after_seconds
                if delay is None:
                    delay = min(
                        self.backoff_max_seconds, self.backoff_base_seconds * 2 ** (attempt - 1)
                    ) * random.uniform(0.8, 1.2)
                delay = min(delay, self.backoff_max_seconds)
                log.info("export %s: %s; retry %d in %.2fs", lease.iid, exc, attempt, delay)
                await lease.renew()
                await self._sleep(delay)
                await lease.renew()


def _report_skipped(iid: str, result: SendResult) -> str | None:
    if not result.skipped:
        return None
    reasons: dict[str, int] = {}
    for ledger_id, reason in result.skipped:
        log.warning("export %s: usage event %s not exported: %s", iid, ledger_id, reason)
        reasons[reason] = reasons.get(reason, 0) + 1
    return "; ".join(f"{n} event(s) not exported: {r}" for r, n in reasons.items())
