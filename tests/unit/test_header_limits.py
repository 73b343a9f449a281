"""The header limits on a WebSocket handshake, at the ASGI level: a server that cannot
send an HTTP denial gets the handshake closed (1008) before it is accepted; the app
never sees it."""

from __future__ import annotations

from typing import Any

from flow.api.limits import POLICY_VIOLATION, HeaderLimitMiddleware


async def handshake(headers: list[tuple[bytes, bytes]], extensions: dict[str, Any]) -> list[Any]:
    reached: list[Any] = []
    sent: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope)

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws", "headers": headers, "extensions": extensions}
    await HeaderLimitMiddleware(app)(scope, receive, send)
    return reached or sent


async def test_a_handshake_over_the_limits_is_closed_1008_without_the_denial_extension() -> None:
    [close] = await handshake([(b"x-h%d" % i, b"1") for i in range(101)], {})
    assert close["type"] == "websocket.close"
    assert close["code"] == POLICY_VIOLATION
    assert "100 header fields" in close["reason"]


async def test_a_handshake_over_the_limits_is_answered_431_with_the_denial_extension() -> None:
    sent = await handshake(
        [(b"x-h%d" % i, b"b" * 2048) for i in range(10)], {"websocket.http.response": {}}
    )
    assert sent[0]["type"] == "websocket.http.response.start"
    assert sent[0]["status"] == 431
    assert b"request_header_fields_too_large" in sent[1]["body"]


async def test_a_handshake_within_the_limits_reaches_the_app() -> None:
    [scope] = await handshake([(b"x-h0", b"1")], {})
    assert scope["type"] == "websocket"
