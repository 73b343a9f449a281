"""Signed webhooks: tell the caller a call ended (``call.completed``/``call.failed``);
budget alerts (:mod:`flow.workflows.budget_alerts`) go out the same way.

The body is JSON with the call's usage (the ledger's ``usage_stats``, money as exact
decimal strings) and insights. It is signed like Stripe's webhooks: header
``Flow-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` keyed with
``FLOW_WEBHOOK_SECRET``; :func:`verify_signature` is the receiver's side.
``Flow-Event-Id`` is the same on every retry, so a receiver can drop duplicates.

Delivery is retried with exponential backoff on network errors, 408, 429 and 5xx;
other 4xx answers stop it. Redirects are not followed.

A call's own event is sent once whoever ends the call (:class:`CallWebhooks`): its
instance after the post-call step, a live instance failing the calls of an instance that
is gone (``instance_lost``) or settling the end of a call written late
(``database_unavailable``), or the stop route when the database ended the call at once.
The sender first claims the event in the database (one conditional update of
``workflow_threads.webhook_claimed_at``), so two instances that both notice a call send
it once.

Server-side request forgery: the URL obeys Flow's outbound-URL policy
(:mod:`flow.net.outbound`). It is checked at join (:func:`validate_webhook_url`) and on
every delivery attempt, by the client that connects only to the address it checked
(DNS rebinding cannot redirect a delivery to a private address). A refused URL is
never retried; ``FLOW_ALLOW_PRIVATE_URLS=true`` (development only) lets local
receivers work. Nothing of the receiver's answer but its status is used.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Coroutine, Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

import httpx

from flow.config import Settings
from flow.db import threads as threads_repo
from flow.db.call_state import CallStatus
from flow.db.client import DatabaseError, DatabaseUnavailable
from flow.metering.events import event_id_from
from flow.net.outbound import (
    UNREACHABLE,
    Resolver,
    UrlNotAllowed,
    answered,
    check_url,
    check_url_shape,
    outbound_client,
)

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Flow-Signature"
EVENT_ID_HEADER = "Flow-Event-Id"
EVENT_TYPE_HEADER = "Flow-Event"
TIMEOUT_SECONDS = 10.0
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_BACKOFF_SECONDS = 1.0
# A claimed webhook not marked sent after this long is sent again (every delivery and
# its retries end well within it).
WEBHOOK_LEASE_SECONDS = 600
# A finished call nobody claimed is swept this long after it finished (its own
# instance sends it at once, when it can).
WEBHOOK_SETTLE_SECONDS = 120
# How long after its creation a call's webhook is still tried.
WEBHOOK_MAX_AGE_SECONDS = 86400
WEBHOOK_SWEEP_LIMIT = 100
SIGNATURE_TOLERANCE_SECONDS = 300
WEBHOOK_DRAIN_SECONDS = 10.0


class WebhookURLError(ValueError):
    """Webhooks cannot be sent from this server; ``str(exc)`` says why (for a 4xx)."""


async def validate_webhook_url(
    url: str,
    settings: Settings,
    *,
    require_resolution: bool = False,
    resolver: Resolver | None = None,
) -> str:
    """Refuse a webhook Flow will not send: :class:`WebhookURLError` when webhooks are
    disabled (no ``FLOW_WEBHOOK_SECRET``), :class:`UrlNotAllowed` naming the rule for a
    URL the outbound policy refuses. Returns the URL. A host that does not resolve (yet)
    passes unless ``require_resolution``: every delivery checks again."""
    if not settings.flow_webhook_secret.get_secret_value():
        raise WebhookURLError("webhooks are disabled on this server (FLOW_WEBHOOK_SECRET is unset)")
    return await check_url(url, settings, resolver=resolver, require_resolution=require_resolution)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Flow-Signature`` header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(
    secret: str,
    header: str,
    body: bytes,
    *,
    tolerance_seconds: int = SIGNATURE_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """A receiver's check: the signature matches and the timestamp is recent."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
        given = fields["v1"]
    except (ValueError, KeyError):
        return False
    if abs((now if now is not None else time.time()) - timestamp) > tolerance_seconds:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, given)


def build_payload(event_type: str, thread: Mapping[str, Any]) -> dict[str, Any]:
    """The webhook body for one thread row (as ``flow.db.threads.get_thread`` returns)."""
    thread_id = str(thread["workflow_thread_id"])
    error = None
    if thread.get("status") == CallStatus.FAILED:
        error = {
            "stage": thread.get("error_stage"),
            "code": thread.get("error_code"),
            "message": thread.get("error_message"),
        }
    return {
        "id": str(event_id_from("webhook", f"{thread_id}:{event_type}")),
        "type": event_type,
        "created_at": datetime.now(UTC).isoformat(),
        "data": {
            "workflow_thread_id": thread_id,
            "status": thread.get("status"),
            "end_user_id": thread.get("end_user_id"),
            "metadata": thread.get("metadata") or {},
            "bot_started_at": thread.get("bot_started_at"),
            "bot_ended_at": thread.get("bot_ended_at"),
            "end_reason": thread.get("end_reason"),
            "error": error,
            "usage": thread.get("usage_stats") or {},
            "insights": thread.get("insights"),
        },
    }


def encode(payload: Mapping[str, Any]) -> bytes:
    """Compact JSON; Decimals (money) as exact strings."""

    def default(value: Any) -> Any:
        if isinstance(value, Decimal):
            return str(value)
        if isinstance(value, datetime):
            return value.isoformat()
        raise TypeError(f"not JSON serialisable: {type(value).__name__}")

    return json.dumps(payload, default=default, separators=(",", ":")).encode()


async def drain(tasks: set[asyncio.Task[Any]], timeout_seconds: float) -> None:
    """Wait for deliveries in flight (bounded), then give up on the rest."""
    pending = list(tasks)
    if not pending:
        return
    _done, still = await asyncio.wait(pending, timeout=timeout_seconds)
    for task in still:
        task.cancel()


class Background:
    """Deliveries sent in the background (retries never hold the caller up), and waited
    for, bounded, at shutdown."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: set[asyncio.Task[Any]] = set()

    def run(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work, name=self._name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout_seconds: float) -> None:
        """Wait for deliveries in flight (bounded), then give up on the rest."""
        await drain(self._tasks, timeout_seconds)


class Delivery(Enum):
    """How one event's sending ended."""

    DELIVERED = "delivered"  # the receiver answered 2xx
    REFUSED = "refused"  # never deliverable as it is: trying again would not help
    UNDELIVERED = "undelivered"  # not delivered after every retry: worth trying later


class WebhookSender:
    """Delivers signed webhook events with retries.

    Parameters:
        settings: provides the secret and the outbound-URL policy.
        max_attempts: deliveries tried before giving up.
        backoff_seconds: the first wait; each retry doubles it.
        resolver: resolves the receiver's host (default: the system's; tests).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff_seconds: float = DEFAULT_BACKOFF_SECONDS,
        resolver: Resolver | None = None,
    ) -> None:
        self.settings = settings
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self._resolver = resolver

    async def deliver(self, url: str, event_type: str, thread: Mapping[str, Any]) -> bool:
        """Send one call's event; True once the receiver answered 2xx. Never raises."""
        about = f"thread {thread.get('workflow_thread_id')}"
        return await self.send(url, build_payload(event_type, thread), about=about)

    async def send(self, url: str, payload: Mapping[str, Any], *, about: str = "") -> bool:
        """Send one event (``{"id", "type", "created_at", "data"}``), signed; True once
        the receiver answered 2xx. Never raises. ``about`` names it in the log."""
        return await self.attempt(url, payload, about=about) is Delivery.DELIVERED

    async def attempt(self, url: str, payload: Mapping[str, Any], *, about: str = "") -> Delivery:
        """:meth:`send`, answering how it ended: delivered, refused for good (webhooks
        off, a URL the policy refuses, a 4xx other than 408 and 429), or failed after
        every retry (worth trying later)."""
        event_type = str(payload["type"])
        what = about or f"event {payload['id']}"
        secret = self.settings.flow_webhook_secret.get_secret_value()
        try:
            if not secret:
                raise WebhookURLError("webhooks are disabled (FLOW_WEBHOOK_SECRET is unset)")
            check_url_shape(url, self.settings)
        except (WebhookURLError, UrlNotAllowed) as exc:
            log.warning("webhook for %s refused: %s", what, exc)
            return Delivery.REFUSED
        body = encode(payload)
        async with outbound_client(
            self.settings, timeout=TIMEOUT_SECONDS, resolver=self._resolver
        ) as client:
            for attempt in range(self.max_attempts):
                headers = {
                    "Content-Type": "application/json",
                    "User-Agent": "flow-webhooks/1",
                    EVENT_ID_HEADER: str(payload["id"]),
                    EVENT_TYPE_HEADER: event_type,
                    SIGNATURE_HEADER: sign(secret, int(time.time()), body),
                }
                retry = True
                try:
                    res = await client.post(url, content=body, headers=headers)
                    if 200 <= res.status_code < 300:
                        return Delivery.DELIVERED
                    retry = res.status_code in (408, 429) or res.status_code >= 500
                    reason = answered(res.status_code)
                except UrlNotAllowed as exc:
                    # Checked on this very connection: the host now resolves to an
                    # address Flow must not call.
                    log.warning("webhook for %s refused: %s", what, exc)
                    return Delivery.REFUSED
                except httpx.HTTPError:
                    reason = UNREACHABLE
                log.warning(
                    "webhook %s for %s: attempt %d failed (%s)",
                    event_type,
                    what,
                    attempt + 1,
                    reason,
                )
                if not retry:
                    return Delivery.REFUSED
                if attempt == self.max_attempts - 1:
                    return Delivery.UNDELIVERED
                await asyncio.sleep(self.backoff_seconds * 2**attempt)
        return Delivery.UNDELIVERED


class CallWebhooks:
    """A finished call's ``call.completed`` or ``call.failed``, sent in the background
    (retries hold nothing up), at least once and in practice once: a sender claims the
    call's event in the database before sending and marks it sent once the receiver
    took it; :meth:`sweep` (every instance's housekeeping) claims again what was never
    marked sent (a sender that died, a receiver down through every retry, a database
    away at the claim) and sends it with the same event id.

    Parameters:
        sb: the database client (reads the calls, claims their events).
        webhooks: the signed sender.
    """

    def __init__(self, sb: Any, webhooks: WebhookSender) -> None:
        self.sb = sb
        self.webhooks = webhooks
        self._background = Background("call-webhook")

    def send_soon(self, thread_ids: Iterable[str], *, claimed: bool = False) -> None:
        """Send the event of each of these calls, read from the database (calls that
        ended without their instance; ``claimed``: already claimed by this sender)."""
        for tid in thread_ids:
            self._background.run(self._send_by_id(tid, claimed=claimed))

    def send_thread_soon(self, thread: Mapping[str, Any], url: str | None = None) -> None:
        """Send the event of a call whose row is at hand (``url``: the join's, when the
        row names none)."""
        self._background.run(self.send(thread, url))

    async def send(
        self, thread: Mapping[str, Any], url: str | None = None, *, claimed: bool = False
    ) -> bool:
        """Claim (unless ``claimed``), deliver and mark sent a finished call's event;
        False when there is nothing to send, another sender claimed it, or the receiver
        never took it (a sweep sends it again). Never raises."""
        url = thread.get("webhook_url") or url
        tid = str(thread["workflow_thread_id"])
        status = CallStatus(str(thread["status"]))
        if not url or not status.finished:
            return False
        try:
            if not claimed and not await threads_repo.claim_webhook(self.sb, tid):
                return False
        except (DatabaseUnavailable, DatabaseError) as exc:
            log.warning("webhook for thread %s not claimed (a sweep sends it): %s", tid, exc)
            return False
        event_type = "call.completed" if status is CallStatus.COMPLETED else "call.failed"
        payload = build_payload(event_type, thread)
        outcome = await self.webhooks.attempt(url, payload, about=f"thread {tid}")
        if outcome is Delivery.UNDELIVERED:
            return False  # a sweep tries again
        try:  # delivered, or refused for good: no sweep sends it again
            await threads_repo.webhook_sent(self.sb, tid)
        except (DatabaseUnavailable, DatabaseError) as exc:
            log.warning("webhook for thread %s done, not marked (may be resent): %s", tid, exc)
        return outcome is Delivery.DELIVERED

    async def sweep(self, limit: int = WEBHOOK_SWEEP_LIMIT) -> list[str]:
        """Claim the webhooks due again (at most ``limit``, the oldest calls first) and
        send them in the background; returns their calls. Never raises."""
        try:
            due = await threads_repo.claim_due_webhooks(
                self.sb,
                lease_seconds=WEBHOOK_LEASE_SECONDS,
                settle_seconds=WEBHOOK_SETTLE_SECONDS,
                max_age_seconds=WEBHOOK_MAX_AGE_SECONDS,
                limit=limit,
            )
        except (DatabaseUnavailable, DatabaseError) as exc:
            log.warning("could not look for webhooks to send again: %s", exc)
            return []
        self.send_soon(due, claimed=True)
        return due

    async def _send_by_id(self, tid: str, *, claimed: bool = False) -> bool:
        try:
            thread = await threads_repo.get_thread(self.sb, tid)
        except (DatabaseUnavailable, DatabaseError) as exc:
            log.warning("webhook for thread %s: the thread cannot be read: %s", tid, exc)
            return False
        return thread is not None and await self.send(thread, claimed=claimed)

    async def drain(self, timeout_seconds: float = WEBHOOK_DRAIN_SECONDS) -> None:
        """Wait for deliveries in flight (bounded), then give up on the rest."""
        await self._background.drain(timeout_seconds)
