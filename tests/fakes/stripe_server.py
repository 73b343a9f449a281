"""A local Stripe that speaks the Billing meter-event endpoints the official SDK calls
(aiohttp, in-process; the SDK's base URLs point at it):

- ``GET /v1/billing/meters``: the account's meters (``list`` object).
- ``POST /v1/billing/meter_events`` (form-encoded, ``payload[...]``): one event,
  validated at once; an identifier already taken answers 400 ``resource_already_exists``,
  an unknown customer 400 ``resource_missing``.
- ``POST /v2/billing/meter_event_session``: a session token valid ``session_seconds``
  (404 when ``v2_enabled`` is false, as for an account without the stream).
- ``POST /v2/billing/meter_event_stream`` (JSON ``{"events": [...]}``, at most 100, the
  session token as bearer): answers 200 at once; an expired token is 401
  ``temporary_session_expired``.

Like Stripe, it keeps identifiers unique: an event whose identifier it already has is
not billed again (``duplicates`` counts them). ``billed`` holds every billed event by
identifier; ``invalid`` the events it refused (bad customer, timestamp out of the
35-day window, a value that is not a whole number). Planned failures
(``fail_next``) answer meter-event requests before anything is billed.
"""

from __future__ import annotations

import json
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from tests.fakes.analytics_sinks import _Sink

WINDOW_SECONDS = 35 * 24 * 3600


def _error(status: int, type_: str, code: str, message: str) -> web.Response:
    return web.json_response(
        {"error": {"type": type_, "code": code, "message": message}}, status=status
    )


class FakeStripe(_Sink):
    def __init__(
        self,
        secret_key: str,
        *,
        customers: set[str],
        meters: set[str],
        v2_enabled: bool = True,
        session_seconds: float = 900.0,
    ) -> None:
        super().__init__()
        self.secret_key = secret_key
        self.customers = customers
        self.meters = meters
        self.v2_enabled = v2_enabled
        self.session_seconds = session_seconds
        self.sessions: dict[str, float] = {}
        self.billed: dict[str, dict[str, Any]] = {}
        self.invalid: list[tuple[dict[str, Any], str]] = []
        self.duplicates = 0
        self.stream_requests = 0
        self.v1_requests = 0

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/billing/meters", self._meters),
            web.post("/v1/billing/meter_events", self._v1_event),
            web.post("/v2/billing/meter_event_session", self._session),
            web.post("/v2/billing/meter_event_stream", self._stream),
        ]

    async def _body(self, request: web.Request) -> bytes | web.Response:
        """As the sinks', with planned failures in Stripe's error format."""
        body = await super()._body(request)
        if isinstance(body, web.Response) and body.status >= 400:
            kind = "rate_limit_error" if body.status == 429 else "api_error"
            failed = _error(body.status, kind, "injected", "injected failure")
            if "Retry-After" in body.headers:
                failed.headers["Retry-After"] = body.headers["Retry-After"]
            return failed
        return body

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.secret_key}"

    def _unauthorized(self) -> web.Response:
        return _error(401, "invalid_request_error", "api_key_invalid", "Invalid API Key")

    def _bill(self, event: dict[str, Any]) -> str | None:
        """Bill one event (or find it billed already); the reason when it is refused."""
        payload = event.get("payload") or {}
        if event.get("event_name") not in self.meters:
            return "no meter has this event name"
        if payload.get("stripe_customer_id") not in self.customers:
            return "no such customer"
        value = str(payload.get("value", ""))
        if not value.isdigit():
            return "value is not a whole number"
        at = event["timestamp"]
        now = datetime.now(UTC)
        if at < now - timedelta(seconds=WINDOW_SECONDS) or at > now + timedelta(minutes=5):
            return "timestamp outside the 35-day window"
        identifier = str(event["identifier"])
        if identifier in self.billed:
            self.duplicates += 1
            return None
        self.billed[identifier] = {**event, "value": int(value)}
        return None

    async def _meters(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        data = [
            {"id": f"mtr_{n}", "object": "billing.meter", "event_name": name, "status": "active"}
            for n, name in enumerate(sorted(self.meters))
        ]
        return web.json_response({"object": "list", "data": data, "has_more": False})

    async def _v1_event(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        self.v1_requests += 1
        form = dict(parse_qsl(body.decode()))
        event = {
            "event_name": form.get("event_name"),
            "identifier": form.get("identifier"),
            "timestamp": datetime.fromtimestamp(int(form["timestamp"]), UTC),
            "payload": {
                "stripe_customer_id": form.get("payload[stripe_customer_id]"),
                "value": form.get("payload[value]"),
            },
        }
        if event["identifier"] in self.billed:
            self.duplicates += 1
            return _error(
                400, "invalid_request_error", "resource_already_exists", "identifier taken"
            )
        reason = self._bill(event)
        if reason == "no such customer":
            return _error(400, "invalid_request_error", "resource_missing", reason)
        if reason:
            self.invalid.append((event, reason))
            return _error(400, "invalid_request_error", "parameter_invalid", reason)
        return web.json_response({"object": "billing.meter_event", **form})

    async def _session(self, request: web.Request) -> web.Response:
        if not self.v2_enabled:
            return _error(404, "invalid_request_error", "not_found", "Unrecognized request URL")
        if not self._authorized(request):
            return self._unauthorized()
        token = "mes_tok_" + secrets.token_hex(8)
        expires = time.time() + self.session_seconds
        self.sessions[token] = expires
        return web.json_response(
            {
                "object": "v2.billing.meter_event_session",
                "id": "mes_" + secrets.token_hex(6),
                "authentication_token": token,
                "created": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "expires_at": datetime.fromtimestamp(expires, UTC)
                .isoformat()
                .replace("+00:00", "Z"),
                "livemode": False,
            }
        )

    async def _stream(self, request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        expires = self.sessions.get(token)
        if expires is None:
            return self._unauthorized()
        if expires < time.time():
            return _error(
                401,
                "temporary_session_expired",
                "billing_meter_event_session_expired",
                "session expired",
            )
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        self.stream_requests += 1
        events = json.loads(body)["events"]
        if len(events) > 100:
            return _error(400, "invalid_request_error", "parameter_invalid", "over 100 events")
        for event in events:
            event["timestamp"] = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
            reason = self._bill(event)
            if reason:  # the stream validates asynchronously: the request still succeeds
                self.invalid.append((event, reason))
        return web.json_response({})
