"""Limits on what a request may carry, enforced before the app reads it.

- Body: ``FLOW_MAX_BODY_BYTES``. A declared ``Content-Length`` over the limit is
  answered 413 at once; a body streamed without one is counted as it arrives and cut
  off with 413 as soon as it passes the limit, so an oversized upload never fills memory.
- Headers: at most :data:`MAX_HEADER_FIELDS` fields and :data:`MAX_HEADER_BYTES` bytes,
  else 431, for HTTP requests and WebSocket handshakes alike (a handshake is refused
  with an HTTP 431 where the server can send one, else closed with 1008 before it is
  accepted). ``flow serve`` also makes the HTTP server itself stop reading a header
  block past :data:`MAX_HEADER_READ_BYTES` (it answers 400 and closes the connection),
  so a huge header never fills memory; below that the whole block reaches the
  middleware, whose 431 says what was too large.
- JSON strings: a lone UTF-16 surrogate (a ``\\ud800`` escape) is valid JSON but no valid
  text; :func:`refuse_lone_surrogates` answers 422 before such a string reaches the
  database.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import Request
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flow.api.errors import ApiError

MAX_HEADER_FIELDS = 100
MAX_HEADER_BYTES = 16 * 1024
# Where the HTTP server stops reading a header block that is not complete yet. Above
# MAX_HEADER_BYTES so that a block a little too large is answered 431 by the
# middleware however the network cut it into reads.
MAX_HEADER_READ_BYTES = 4 * MAX_HEADER_BYTES
POLICY_VIOLATION = 1008


class _TooLarge(HTTPException):
    """An HTTPException so that FastAPI, reading the body, lets it through unchanged."""

    def __init__(self, max_body_bytes: int) -> None:
        super().__init__(413, _message(max_body_bytes))


def _message(max_body_bytes: int) -> str:
    return f"the request body is larger than {max_body_bytes} bytes"


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._refuse(scope, receive, send)
            return

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _TooLarge(self.max_body_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = _message(self.max_body_bytes)
        await _answer(scope, receive, send, 413, "payload_too_large", message)


class HeaderLimitMiddleware:
    """431 for a request (or a WebSocket handshake) with too many header fields or too
    many header bytes."""

    def __init__(
        self,
        app: ASGIApp,
        max_fields: int = MAX_HEADER_FIELDS,
        max_bytes: int = MAX_HEADER_BYTES,
    ) -> None:
        self.app = app
        self.max_fields = max_fields
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = self._problem(scope) if scope["type"] in ("http", "websocket") else None
        if problem is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await _answer(scope, receive, send, 431, "request_header_fields_too_large", problem)
        else:
            await _refuse_handshake(scope, receive, send, problem)

    def _problem(self, scope: Scope) -> str | None:
        headers: Any = scope.get("headers") or []
        if len(headers) > self.max_fields:
            return f"more than {self.max_fields} header fields"
        size = sum(len(name) + len(value) + 4 for name, value in headers)
        if size > self.max_bytes:
            return f"the request headers are larger than {self.max_bytes} bytes"
        return None


async def _refuse_handshake(scope: Scope, receive: Receive, send: Send, message: str) -> None:
    """Refuse a WebSocket handshake before it is accepted: an HTTP 431 with the API's
    error body where the server can send one, else a close (1008: policy violation)."""
    connect = await receive()
    if connect["type"] != "websocket.connect":
        return
    if "websocket.http.response" in (scope.get("extensions") or {}):
        await _answer(scope, receive, send, 431, "request_header_fields_too_large", message)
    else:
        await send({"type": "websocket.close", "code": POLICY_VIOLATION, "reason": message})


async def _answer(
    scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str
) -> None:
    """The API's error body, sent before the app has seen the request; the connection
    closes after it (the rest of the request is not read)."""
    response = ApiError(status, code, message, headers={"Connection": "close"}).response()
    await response(scope, receive, send)


# A JSON escape of a UTF-16 surrogate: the only way a lone one can be written in JSON.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


async def refuse_lone_surrogates(request: HTTPConnection) -> None:
    """A dependency of every route: 422 when a JSON body holds a lone surrogate (a
    websocket has no body)."""
    if not isinstance(request, Request) or request.method not in ("POST", "PUT", "PATCH"):
        return
    body = await request.body()
    if not _SURROGATE_ESCAPE.search(body):
        return
    try:
        parsed = json.loads(body)
    except ValueError:
        return  # the route's own validation answers it
    where = _lone_surrogate_at(parsed, ("body",))
    if where is not None:
        message = "a string holds a lone UTF-16 surrogate, which is not valid text"
        raise ApiError(
            422,
            "validation_error",
            message,
            details=[{"loc": list(where), "msg": message, "type": "string_unicode"}],
        )


def _lone_surrogate_at(value: Any, loc: tuple[str, ...]) -> tuple[str, ...] | None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return loc
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _lone_surrogate_at(key, (*loc, "<key>")) or _lone_surrogate_at(
                item, (*loc, str(key))
            )
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _lone_surrogate_at(item, (*loc, str(index)))
            if found is not None:
                return found
    return None


def _content_length(scope: Scope) -> int | None:
    headers: Any = scope.get("headers") or []
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
