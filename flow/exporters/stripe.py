"""Stripe destination: ledger rows become Stripe Billing meter events, so each key's
usage lands on its Stripe customer's invoice.

One integration bills every key that has a Stripe customer (``flow keys
stripe-customer KEY cus_...``); only the operator creates it. Each ledger row becomes:

- a cost event: ``event_name`` (``flow_cost`` by default), ``identifier`` = the ledger
  event id (Stripe keeps identifiers unique for at least 24 hours, so a batch resent
  after a lost answer is not billed twice), ``timestamp`` = ``occurred_at``,
  ``payload.stripe_customer_id`` and ``payload.value`` = the cost in integer micro-USD,
  rounded half-up per event (``$0.0000125`` is 13);
- optionally one event per unit meter named in ``unit_meters`` (``input_tokens``,
  ``output_tokens``, ``tts_characters``, ``stt_milliseconds``,
  ``telephony_milliseconds``: a phone call leg's exact duration), identifier
  ``<ledger id>-<unit>``, for rows that used that unit.

Every kind of row (``llm``, ``tts``, ``stt``, ``telephony``) is billed by its cost alike.

Rows that cannot be billed are skipped, counted in the integration's ``events_skipped``
and named in its warning, never silently dropped: a key without a Stripe customer, an
unpriced row (``flow reprice`` prices it later and the correction is billed), a row
older than Stripe's 35-day window, a value over :data:`MAX_VALUE`.

Sending: the v2 meter event stream (a session token from
``/v2/billing/meter_event_session``, renewed before it expires or when Stripe says it
did; up to 100 events a request). An account or host without the stream (404 on the
session) falls back to v1 ``/v1/billing/meter_events``, one event a request, a few at
a time; there an identifier Stripe already has counts as delivered and a customer
Stripe does not know is skipped. Credentials are checked before saving by listing the
account's meters: every event name must be an active meter's.

Failure behaviour: as :func:`~flow.exporters.stripe_client.destination_error`.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

import httpx
import stripe
from pydantic import BaseModel, ConfigDict, Field

from flow.exporters.base import CredentialsInvalid, Destination, Retryable, SendResult
from flow.exporters.crypto import mask
from flow.exporters.spec import DestinationSpec, EventName, HttpUrlText, IntegrationBody, Stored
from flow.exporters.stripe_client import (
    STRIPE_API,
    STRIPE_METER_EVENTS,
    destination_error,
    status_of,
    stripe_client,
)
from flow.net.outbound import UNREACHABLE, answered

DEFAULT_EVENT_NAME = "flow_cost"
MAX_BATCH = 100  # ledger rows a send; the stream takes 100 events a request
STREAM_EVENTS = 100
# Stripe takes timestamps from the last 35 days; an hour of margin for clocks and for
# the time a batch spends in retries.
MAX_AGE = timedelta(days=35) - timedelta(hours=1)
MAX_VALUE = 10**15 - 1  # 15 digits: what every JSON reader holds exactly
V1_CONCURRENCY = 8
SESSION_MARGIN = timedelta(seconds=60)
Unit = Literal[
    "input_tokens", "output_tokens", "tts_characters", "stt_milliseconds", "telephony_milliseconds"
]
SECONDS_UNITS = {"stt_milliseconds": "stt", "telephony_milliseconds": "telephony"}
SECRET_KEY = r"^(sk|rk)_(test|live)_[A-Za-z0-9]{4,250}$"


def micro_usd(cost: Decimal) -> int:
    """A cost in integer micro-USD, rounded half-up."""
    return int((cost * 1_000_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def unit_value(row: dict[str, Any], unit: str) -> int:
    if unit == "tts_characters":
        return int(row.get("characters") or 0) if row["kind"] == "tts" else 0
    if unit in SECONDS_UNITS:
        if row["kind"] != SECONDS_UNITS[unit]:
            return 0
        seconds = Decimal(str(row.get("audio_seconds") or 0))
        return int((seconds * 1000).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return int(row.get(unit) or 0)


class StripeDestination:
    """Sends meter events to one Stripe account.

    Parameters:
        api_base: Stripe's API (``https://api.stripe.com``), or a stand-in.
        meter_events_base: the v2 stream's host (``https://meter-events.stripe.com``).
        secret_key: a secret or restricted key allowed to write meter events.
        event_name: the cost meter's event name.
        unit_meters: more meters, by unit (``input_tokens``, ``output_tokens``,
            ``tts_characters``, ``stt_milliseconds``, ``telephony_milliseconds``): their
            event names.
    """

    max_batch = MAX_BATCH
    bills_customers = True  # the sync cycle adds each row's ``stripe_customer_id``

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        api_base: str,
        meter_events_base: str,
        secret_key: str,
        event_name: str,
        unit_meters: dict[str, str],
    ) -> None:
        self.host = api_base
        self._stripe = stripe_client(
            client, secret_key, api_base=api_base, meter_events_base=meter_events_base
        )
        self._event_name = event_name
        self._units = dict(unit_meters)
        self._session: tuple[str, datetime] | None = None
        self._v1 = False

    # --- building events -------------------------------------------------------
    def events_for(
        self, rows: list[dict[str, Any]], now: datetime
    ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        """The meter events of these rows, and the rows skipped with their reasons."""
        events: list[dict[str, Any]] = []
        skipped: list[tuple[str, str]] = []
        for row in rows:
            ledger_id = str(row["id"])
            customer = row.get("stripe_customer_id")
            at = datetime.fromisoformat(str(row["occurred_at"]))
            if not customer:
                skipped.append((ledger_id, "no Stripe customer for its key"))
            elif row.get("cost_usd") is None:
                skipped.append((ledger_id, "unpriced (flow reprice prices it, then it is billed)"))
            elif at < now - MAX_AGE:
                skipped.append((ledger_id, "older than Stripe's 35 days"))
            elif (value := micro_usd(Decimal(str(row["cost_usd"])))) > MAX_VALUE:
                skipped.append((ledger_id, "value over 15 digits"))
            else:
                stamp = at.astimezone(UTC)
                events.append(self._event(self._event_name, ledger_id, stamp, customer, value))
                for unit, name in self._units.items():
                    amount = unit_value(row, unit)
                    if 0 < amount <= MAX_VALUE:
                        events.append(
                            self._event(name, f"{ledger_id}-{unit}", stamp, customer, amount)
                        )
        return events, skipped

    @staticmethod
    def _event(
        name: str, identifier: str, at: datetime, customer: str, value: int
    ) -> dict[str, Any]:
        return {
            "event_name": name,
            "identifier": identifier,
            "timestamp": at,
            "payload": {"stripe_customer_id": customer, "value": str(value)},
        }

    # --- sending ---------------------------------------------------------------
    async def send(self, rows: list[dict[str, Any]], *, historical: bool) -> SendResult:
        events, skipped = self.events_for(rows, datetime.now(UTC))
        if not self._v1:
            try:
                for start in range(0, len(events), STREAM_EVENTS):
                    await self._stream(events[start : start + STREAM_EVENTS])
            except _StreamUnavailable:
                self._v1 = True
        if self._v1:
            refused = await self._send_v1(events)
            skipped += [(i, r) for i, r in refused.items() if i not in {s[0] for s in skipped}]
        return SendResult(accepted=len(rows) - len(skipped), skipped=skipped)

    async def _token(self, *, renew: bool = False) -> str:
        now = datetime.now(UTC)
        if self._session is None or renew or self._session[1] - SESSION_MARGIN <= now:
            try:
                session = await self._stripe.v2.billing.meter_event_session.create_async()
            except stripe.StripeError as exc:
                if status_of(exc) in (400, 404):
                    raise _StreamUnavailable from None
                raise destination_error(exc, self.host) from None
            expires = datetime.fromisoformat(str(session.expires_at).replace("Z", "+00:00"))
            self._session = (session.authentication_token, expires)
        return self._session[0]

    async def _stream(self, events: list[dict[str, Any]]) -> None:
        body = [
            {**e, "timestamp": e["timestamp"].isoformat().replace("+00:00", "Z")} for e in events
        ]
        for attempt in (1, 2):
            token = await self._token(renew=attempt == 2)
            try:
                await self._stripe.v2.billing.meter_event_stream.create_async(
                    {"events": body},  # type: ignore[typeddict-item]
                    {"api_key": token},
                )
                return
            except stripe.TemporarySessionExpiredError:
                continue  # a new session, then once more
            except stripe.StripeError as exc:
                raise destination_error(exc, self.host) from None
        raise Retryable(f"Stripe at {self.host}: the meter event session keeps expiring")

    async def _send_v1(self, events: list[dict[str, Any]]) -> dict[str, str]:
        """Sends each event; returns the rows Stripe refused on their own, by ledger id."""
        refused: dict[str, str] = {}
        gate = asyncio.Semaphore(V1_CONCURRENCY)

        async def one(event: dict[str, Any]) -> None:
            params = {**event, "timestamp": int(event["timestamp"].timestamp())}
            async with gate:
                try:
                    await self._stripe.v1.billing.meter_events.create_async(params)  # type: ignore[arg-type]
                except stripe.InvalidRequestError as exc:
                    if exc.code == "resource_already_exists":
                        return  # already delivered: a resent batch
                    if exc.code == "resource_missing":
                        refused[event["identifier"][:36]] = "Stripe does not know its customer"
                        return
                    raise destination_error(exc, self.host) from None
                except stripe.StripeError as exc:
                    raise destination_error(exc, self.host) from None

        results = await asyncio.gather(*(one(e) for e in events), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return refused

    async def validate(self) -> None:
        try:
            meters = await self._stripe.v1.billing.meters.list_async({"limit": 100})
        except stripe.StripeError as exc:
            status = status_of(exc)
            if status in (401, 403):
                raise CredentialsInvalid(
                    f"bad key: Stripe at {self.host} refused the secret key"
                ) from None
            why = UNREACHABLE if status is None else answered(status)
            raise CredentialsInvalid(
                f"unexpected answer from Stripe at {self.host}: {why}"
            ) from None
        active = {m.event_name for m in meters.data if m.status == "active"}
        missing = sorted({self._event_name, *self._units.values()} - active)
        if missing:
            raise CredentialsInvalid(
                f"no active Stripe meter has the event name {', '.join(missing)} "
                "(create the meters first)"
            )


class _StreamUnavailable(Exception):
    """This account or host has no v2 meter event stream: use v1."""


class StripeCreate(IntegrationBody):
    provider: Literal["stripe"]
    secret_key: str = Field(pattern=SECRET_KEY, max_length=260)
    api_base: HttpUrlText | None = None
    event_name: EventName = Field(default=DEFAULT_EVENT_NAME, max_length=100)
    unit_meters: dict[Unit, EventName] = Field(default_factory=dict)


class StripePatch(BaseModel):
    """The Stripe fields an edit may change."""

    model_config = ConfigDict(extra="forbid")
    secret_key: str | None = Field(default=None, pattern=SECRET_KEY, max_length=260)
    api_base: HttpUrlText | None = None
    unit_meters: dict[Unit, EventName] | None = None


class StripeSpec(DestinationSpec[StripeCreate]):
    """Stripe: settings ``api_base`` and ``unit_meters``; credentials ``secret_key``."""

    name = "stripe"
    create_model = StripeCreate
    patch_model = StripePatch
    host_setting = "api_base"
    operator_only = True
    cli_help = {
        "secret_key": "Stripe secret key (sk_live_..., or a restricted rk_ key)",
        "api_base": "Stripe API base URL (default https://api.stripe.com; also the meter "
        "event stream's host when given)",
        "unit_meters": "per-unit meters: input_tokens=EVENT,output_tokens=EVENT,"
        "tts_characters=EVENT,stt_milliseconds=EVENT,telephony_milliseconds=EVENT",
    }

    def split_body(self, body: StripeCreate) -> tuple[dict[str, Any], dict[str, Any]]:
        return (
            {"api_base": body.api_base or STRIPE_API, "unit_meters": dict(body.unit_meters)},
            {"secret_key": body.secret_key},
        )

    def hint(self, creds: dict[str, Any]) -> str:
        return f"key {mask(creds['secret_key'])}"

    def apply_patch(self, given: dict[str, Any], stored: Stored) -> None:
        if "api_base" in given:
            stored.settings["api_base"] = given["api_base"] or STRIPE_API
        if given.get("unit_meters") is not None:
            stored.settings["unit_meters"] = dict(given["unit_meters"])
        if given.get("secret_key"):
            stored.creds["secret_key"] = given["secret_key"]

    def cli_value(self, field: str, text: str) -> Any:
        if field != "unit_meters":
            return text
        pairs = (part.partition("=") for part in text.split(",") if part.strip())
        return {unit.strip(): name.strip() for unit, _, name in pairs}

    def build(self, client: httpx.AsyncClient, stored: Stored, source_id: str) -> Destination:
        api_base = stored.settings.get("api_base") or STRIPE_API
        return StripeDestination(
            client,
            api_base=api_base,
            meter_events_base=STRIPE_METER_EVENTS if api_base == STRIPE_API else api_base,
            secret_key=stored.creds["secret_key"],
            event_name=stored.settings.get("event_name") or DEFAULT_EVENT_NAME,
            unit_meters=dict(stored.settings.get("unit_meters") or {}),
        )


STRIPE = StripeSpec()
