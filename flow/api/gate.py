"""The way into the app: each request's id, and the door of ``POST /api/bot/join``.

- :class:`RequestContextMiddleware` names every request: the caller's ``X-Request-ID``
  when it is a plain token of at most 64 characters, else a new one. It is answered in
  ``X-Request-ID`` and carried by every log line the request causes (the call a join
  starts included: :func:`flow.logs.bind`).
- :class:`JoinGateMiddleware` answers a join (or Twilio's webhook for a new phone call)
  503 ``draining`` with ``Retry-After`` while the instance drains, before anything else
  is read (no key check, no database work: the load balancer retries it on another
  instance), and counts every join's answer by status (``flow_joins_total``).
"""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flow import metrics
from flow.api.errors import ApiError
from flow.bot.drain import Drain
from flow.logs import bind

REQUEST_ID_HEADER = b"x-request-id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
JOIN_PATH = "/api/bot/join"
# The ways a new call comes in: a join, and Twilio's webhook for a call to a number.
CALL_PATHS = frozenset({JOIN_PATH, "/api/telephony/twilio/voice"})
DRAINING_RETRY_AFTER_SECONDS = 2


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(REQUEST_ID_HEADER, b"").decode("latin-1")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        bind(request_id=request_id, key_id=None, thread_id=None)

        async def named_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] != REQUEST_ID_HEADER]
                message["headers"] = [*headers, (REQUEST_ID_HEADER, request_id.encode())]
            await send(message)

        await self.app(scope, receive, named_send)


class JoinGateMiddleware:
    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (
            scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in CALL_PATHS
        ):
            await self.app(scope, receive, send)
            return
        if self.drain.draining:
            metrics.JOINS.labels("503").inc()
            refusal = ApiError(
                503,
                "draining",
                "this instance is shutting down and takes no new call; retry (another "
                "instance takes it)",
                headers={"Retry-After": str(DRAINING_RETRY_AFTER_SECONDS)},
            ).response()
            await refusal(scope, receive, send)
            return

        async def counted_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                metrics.JOINS.labels(str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counted_send)
