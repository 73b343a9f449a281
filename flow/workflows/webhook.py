"""Signed webhooks: tell the caller a call ended (``call.completed``/``call.failed``).

The body is JSON with the call's usage (the ledger's ``usage_stats``, money as exact
decimal strings) and insights. It is signed like Stripe's webhooks: header
``Flow-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` keyed with
``FLOW_WEBHOOK_SECRET``; :func:`verify_signature` is the receiver's side.
``Flow-Event-Id`` is the same on every retry, so a receiver can drop duplicates.

Delivery is retried with exponential backoff on network errors, 408, 429 and 5xx;
other 4xx answers stop it. Redirects are not followed.

Server-side request forgery: a URL whose host resolves to a private, loopback,
link-local, multicast or reserved address is refused (at join, by
:func:`validate_webhook_url`, and again before each delivery in case DNS changed),
unless ``FLOW_WEBHOOK_ALLOW_PRIVATE=true``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import httpx

from flow.config import Settings
from flow.db.call_state import CallStatus
from flow.metering.events import event_id_from

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Flow-Signature"
EVENT_ID_HEADER = "Flow-Event-Id"
EVENT_TYPE_HEADER = "Flow-Event"
MAX_URL_LENGTH = 2048
TIMEOUT_SECONDS = 10.0
DNS_TIMEOUT_SECONDS = 3.0
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_BACKOFF_SECONDS = 1.0
SIGNATURE_TOLERANCE_SECONDS = 300


class WebhookURLError(ValueError):
    """A webhook URL Flow will not call; ``str(exc)`` says why (for a 4xx answer)."""


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def check_url_shape(url: str, settings: Settings) -> tuple[str, int]:
    """Scheme, length, host and credentials; returns (host, port). No network."""
    if not isinstance(url, str) or not url:
        raise WebhookURLError("webhook_url must be a non-empty URL")
    if len(url) > MAX_URL_LENGTH:
        raise WebhookURLError(f"webhook_url is longer than {MAX_URL_LENGTH} characters")
    parts = urlsplit(url)
    allowed = ("https",) if settings.flow_env == "production" else ("https", "http")
    if parts.scheme not in allowed:
        raise WebhookURLError(f"webhook_url must use {' or '.join(allowed)}")
    if not parts.hostname:
        raise WebhookURLError("webhook_url has no host")
    if parts.username or parts.password:
        raise WebhookURLError("webhook_url must not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise WebhookURLError("webhook_url has an invalid port") from exc
    if not settings.flow_webhook_secret.get_secret_value():
        raise WebhookURLError("webhooks are disabled on this server (FLOW_WEBHOOK_SECRET is unset)")
    return parts.hostname, port


async def validate_webhook_url(
    url: str, settings: Settings, *, require_resolution: bool = False
) -> str:
    """Refuse a URL Flow must not call (raises :class:`WebhookURLError` with the reason);
    returns the URL. Resolves the host: every address must be public unless
    ``FLOW_WEBHOOK_ALLOW_PRIVATE`` is set. A host that does not resolve (yet) passes
    unless ``require_resolution``: delivery checks again and refuses it then."""
    host, port = check_url_shape(url, settings)
    if settings.flow_webhook_allow_private:
        return url
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM),
                DNS_TIMEOUT_SECONDS,
            )
        except (OSError, UnicodeError, TimeoutError) as exc:
            if not require_resolution:
                return url
            raise WebhookURLError(f"webhook_url host {host!r} does not resolve") from exc
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        if not require_resolution:
            return url
        raise WebhookURLError(f"webhook_url host {host!r} does not resolve")
    for address in addresses:
        if not _is_public(address):
            raise WebhookURLError(
                f"webhook_url resolves to a private, loopback or link-local address "
                f"({address}); refused"
            )
    return url


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


class WebhookSender:
    """Delivers signed webhook events with retries.

    Parameters:
        settings: provides the secret and the private-address policy.
        max_attempts: deliveries tried before giving up.
        backoff_seconds: the first wait; each retry doubles it.
        transport: an httpx transport (tests only).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff_seconds: float = DEFAULT_BACKOFF_SECONDS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self._transport = transport

    async def deliver(self, url: str, event_type: str, thread: Mapping[str, Any]) -> bool:
        """Send one event; True once the receiver answered 2xx. Never raises."""
        try:
            await validate_webhook_url(url, self.settings, require_resolution=True)
        except WebhookURLError as exc:
            log.warning("webhook for thread %s refused: %s", thread.get("workflow_thread_id"), exc)
            return False
        payload = build_payload(event_type, thread)
        body = encode(payload)
        secret = self.settings.flow_webhook_secret.get_secret_value()
        async with httpx.AsyncClient(
            timeout=TIMEOUT_SECONDS, follow_redirects=False, transport=self._transport
        ) as client:
            for attempt in range(self.max_attempts):
                headers = {
                    "Content-Type": "application/json",
                    "User-Agent": "flow-webhooks/1",
                    EVENT_ID_HEADER: payload["id"],
                    EVENT_TYPE_HEADER: event_type,
                    SIGNATURE_HEADER: sign(secret, int(time.time()), body),
                }
                retry = True
                try:
                    res = await client.post(url, content=body, headers=headers)
                    if 200 <= res.status_code < 300:
                        return True
                    retry = res.status_code in (408, 429) or res.status_code >= 500
                    reason = f"HTTP {res.status_code}"
                except httpx.HTTPError as exc:
                    reason = exc.__class__.__name__
                log.warning(
                    "webhook %s for thread %s: attempt %d failed (%s)",
                    event_type,
                    thread.get("workflow_thread_id"),
                    attempt + 1,
                    reason,
                )
                if not retry or attempt == self.max_attempts - 1:
                    return False
                await asyncio.sleep(self.backoff_seconds * 2**attempt)
        return False
