"""The official ``stripe`` SDK, sending through Flow's outbound client, and how its
answers become the sync cycle's errors.

:class:`OutboundHTTPClient` is the SDK's HTTP client interface over an
:func:`flow.net.outbound.outbound_client`: every request to Stripe (or to the
``api_base`` an operator set) is checked by the outbound-URL policy and pinned to the
address checked. The SDK's own retries are off (``max_network_retries=0``): the sync
cycle retries, with its backoff, its lease renewals and ``Retry-After``.

Failure behaviour (:func:`destination_error`): no answer -> :class:`Retryable`
(unreachable); 429 and 5xx -> :class:`Retryable` with ``Retry-After``; 401/403 ->
:class:`AuthRejected`; anything else -> :class:`DestinationError`. Messages carry the
status, never Stripe's text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, NoReturn

import httpx
import stripe

from flow.exporters.base import AuthRejected, DestinationError, Retryable, retry_after_seconds
from flow.net.outbound import UNREACHABLE, answered

STRIPE_API = "https://api.stripe.com"
STRIPE_METER_EVENTS = "https://meter-events.stripe.com"


class OutboundHTTPClient(stripe.HTTPClient):
    """The SDK's async HTTP client on Flow's outbound client (which it does not own)."""

    name = "flow-outbound"

    def __init__(self, client: httpx.AsyncClient) -> None:
        super().__init__()
        self._client = client

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data: Any = None,
        *,
        _usage: list[str] | None = None,
    ) -> NoReturn:
        raise RuntimeError("Flow calls Stripe asynchronously only")

    async def request_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        content = post_data.encode() if isinstance(post_data, str) else post_data
        try:
            res = await self._client.request(method, url, headers=dict(headers), content=content)
        except httpx.HTTPError as exc:
            raise stripe.APIConnectionError(UNREACHABLE, should_retry=True) from exc
        return res.content, res.status_code, res.headers

    async def request_stream_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> NoReturn:
        raise RuntimeError("Flow reads no streams from Stripe")

    def sleep_async(self, secs: float) -> Any:
        return asyncio.sleep(secs)

    async def close_async(self) -> None:
        """The outbound client belongs to the sync cycle."""


def stripe_client(
    client: httpx.AsyncClient, secret_key: str, *, api_base: str, meter_events_base: str
) -> stripe.StripeClient:
    return stripe.StripeClient(
        secret_key,
        base_addresses={"api": api_base, "meter_events": meter_events_base},
        http_client=OutboundHTTPClient(client),
        max_network_retries=0,
    )


def status_of(exc: stripe.StripeError) -> int | None:
    return exc.http_status if isinstance(exc.http_status, int) else None


def destination_error(exc: stripe.StripeError, where: str) -> DestinationError:
    """The sync cycle's error for a refusal by Stripe at ``where`` (a host)."""
    status = status_of(exc)
    if status is None or isinstance(exc, stripe.APIConnectionError):
        return Retryable(f"Stripe at {where}: {UNREACHABLE}")
    if status in (401, 403):
        return AuthRejected(
            f"Stripe at {where} rejected the secret key (HTTP {status}); "
            "edit the integration's credentials to resume"
        )
    if status in (408, 409, 429) or status >= 500:
        headers = exc.headers or {}
        return Retryable(
            f"Stripe at {where}: {answered(status)}",
            retry_after_seconds(headers.get("Retry-After") or headers.get("retry-after")),
        )
    return DestinationError(f"Stripe at {where} refused the meter events: {answered(status)}")
