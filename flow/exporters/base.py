"""What every destination shares: the export event built from a ledger row, the outcome
of a send, the errors a sync cycle reacts to, the errors that refuse an integration
before it is saved, and :func:`post`, the one way a destination sends a request.

A destination's host may be a customer's choice: it sends only through the client it is
built with (an :func:`flow.net.outbound.outbound_client`, pinned to addresses the
outbound-URL policy checked) and reports failures with fixed reasons (a status code,
:data:`~flow.net.outbound.UNREACHABLE`), never with the text of an answer or of an
exception, which would make the integration's ``last_error`` a window on whatever
answered.

The event is built as JSON text by hand rather than through ``json.dumps`` of a dict:
``cost`` must be a JSON *number* (analytics tools sum numbers, not strings) written from
the ledger's exact decimal digits, which a float round trip would not guarantee, and
building the text directly is also what makes a 2,000-event batch cheap.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, Protocol

import httpx

from flow.net.outbound import UNREACHABLE

DEFAULT_EVENT_NAME = "prism_request"
# Derives the destination's dedup id from the ledger id, so a resent row is the same
# event to PostHog; a namespace of our own keeps it distinct from live $ai_generation
# events that may reuse the ledger id.
EXPORT_UUID_NAMESPACE = uuid.UUID("6f0b3c2e-5d1a-5b8e-9c4f-2a7d1e3b4c5d")
_DECIMAL = re.compile(r"^-?\d+(\.\d+)?$")


class DistinctIdMode(StrEnum):
    SOURCE = "source"
    END_USER = "end_user"


class DestinationError(Exception):
    """The destination refused a batch in a way a retry will not fix."""


class AuthRejected(DestinationError):
    """401/403: the credentials are wrong (or belong to another region)."""


class Retryable(DestinationError):
    """429, 5xx or a network failure: try again later, after ``retry_after`` if given."""

    def __init__(self, message: str, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class PayloadTooLarge(DestinationError):
    """413: split the batch and send the halves."""


class CredentialsInvalid(Exception):
    """Validation before saving failed; the message names the problem."""


class IntegrationInputError(Exception):
    """A request that cannot be saved as given (4xx); the message says why."""


@dataclass
class SendResult:
    """What the destination did with a batch.

    Parameters:
        accepted: events the destination took.
        skipped: events not sent or refused, each ``(ledger id, reason)``; reported, not
            retried.
    """

    accepted: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def add(self, other: SendResult) -> None:
        self.accepted += other.accepted
        self.skipped.extend(other.skipped)


class Destination(Protocol):
    max_batch: int

    async def validate(self) -> None: ...

    async def send(self, rows: list[dict[str, Any]], *, historical: bool) -> SendResult: ...


async def post(client: httpx.AsyncClient, url: str, *, what: str, **kwargs: Any) -> httpx.Response:
    """POST through the destination's client. Any failure to connect, send or read is
    :class:`Retryable` with one fixed reason (``what``, e.g. "PostHog", names the
    destination); a URL the outbound policy refuses raises
    :class:`~flow.net.outbound.UrlNotAllowed`, which ends the cycle in error."""
    try:
        return await client.post(url, **kwargs)
    except httpx.HTTPError as exc:
        raise Retryable(f"{what}: {UNREACHABLE}") from exc


def decimal_number(text: str | None) -> str:
    """A JSON number with exactly the digits of a Postgres numeric, or ``null``."""
    if text is None or not _DECIMAL.match(text):
        return "null"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _bool(v: Any) -> str:
    return "true" if v else "false"


def _int(v: Any) -> str:
    return "null" if v is None else str(int(v))


def export_uuid(ledger_id: str) -> str:
    return str(uuid.uuid5(EXPORT_UUID_NAMESPACE, ledger_id))


def insert_id(ledger_id: str) -> str:
    """Mixpanel's $insert_id: at most 36 characters of letters, digits and dashes."""
    return ledger_id.replace("-", "")


def distinct_id_of(row: dict[str, Any], mode: DistinctIdMode, source_id: str) -> str:
    if mode is DistinctIdMode.END_USER:
        return str(row.get("end_user_id") or row["api_key_id"])
    return source_id


def properties_json(row: dict[str, Any]) -> str:
    """The shared properties, as the inside of a JSON object (no braces)."""
    dumps = json.dumps
    input_tokens = int(row["input_tokens"])
    output_tokens = int(row["output_tokens"])
    return (
        f'"model":{dumps(row["model"])},"provider":{dumps(row["provider"])},'
        f'"latency_ms":{decimal_number(row.get("latency_ms"))},'
        f'"input_tokens":{input_tokens},"output_tokens":{output_tokens},'
        f'"total_tokens":{input_tokens + output_tokens},'
        f'"input_audio_tokens":{int(row["input_audio_tokens"])},'
        f'"output_audio_tokens":{int(row["output_audio_tokens"])},'
        f'"cache_read_audio_tokens":{int(row["cache_read_audio_tokens"])},'
        f'"cost":{decimal_number(row.get("cost_usd"))},'
        f'"status_code":{_int(row.get("status_code"))},"is_error":{_bool(row["is_error"])},'
        f'"cache_hit":{_bool(row["cache_hit"])},"kind":{dumps(row["kind"])},'
        f'"category":{dumps(row["category"])},'
        f'"workflow_thread_id":{dumps(str(row["workflow_thread_id"]))},'
        f'"api_key_id":{dumps(str(row["api_key_id"]))},"estimated":{_bool(row["estimated"])}'
        + (f',"corrects":{dumps(str(row["corrects"]))}' if row.get("corrects") else "")
    )


def occurred_at(row: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(row["occurred_at"]))


def retry_after_seconds(value: str | None) -> float | None:
    """Parse a Retry-After header (seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
