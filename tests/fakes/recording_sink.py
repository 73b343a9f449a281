"""A local HTTP endpoint that records every request (any method, any path) and answers
what a test scripted for the path: a status, a body, headers (a redirect, a secret
looking body). Also raw TCP servers that close at once or answer something that is not
HTTP, for the failures a caller must not be able to tell apart."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class RecordingSink:
    """Answers ``answers[path]`` (else ``default``) and keeps every request in
    ``requests`` as ``{"method", "path", "headers", "body"}``."""

    def __init__(self, default: Answer | None = None) -> None:
        self.default = default or Answer()
        self.answers: dict[str, Answer] = {}
        self.requests: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, path: str, status: int, body: bytes = b"", **headers: str) -> None:
        self.answers[path] = Answer(status, body, dict(headers))

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "headers": dict(request.headers),
                "body": body,
            }
        )
        answer = self.answers.get(request.path, self.default)
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    async def start(self, ssl_context: Any = None) -> RecordingSink:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class RawServer:
    """A TCP server on 127.0.0.1 that reads a little, writes ``reply`` (nothing: it just
    closes) and closes the connection."""

    def __init__(self, reply: bytes = b"") -> None:
        self.reply = reply
        self.connections = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await asyncio.wait_for(reader.read(65536), 1)
        except TimeoutError:
            pass
        if self.reply:
            writer.write(self.reply)
            await writer.drain()
        writer.close()

    async def start(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
