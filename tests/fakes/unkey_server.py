"""A local Unkey API (v2) for tests: the real ``unkey.py`` SDK points its ``server_url``
here and verifies keys against what the test registered.

``POST /v2/keys.verifyKey`` answers HTTP 200 with ``{"meta": {"requestId"}, "data":
{...}}`` for every outcome, as Unkey does: ``valid``, ``code`` and, for known keys,
``keyId``, ``name``, ``enabled``, ``identity`` and ``ratelimits``. A wrong root key gets
Unkey's 401 error body. ``fail_with`` makes it answer that HTTP status instead (500,
503...), and ``stop()`` closes the port so the SDK meets connection refused.

Runs uvicorn in a thread with its own event loop, so it serves while the test's loop
waits on the app under test.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


@dataclass
class FakeKey:
    """What Unkey knows about one key."""

    key_id: str
    code: str = "VALID"
    name: str | None = None
    external_id: str | None = None
    ratelimits: list[dict[str, Any]] = field(default_factory=list)

    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "valid": self.code == "VALID",
            "code": self.code,
            "keyId": self.key_id,
            "enabled": self.code != "DISABLED",
        }
        if self.name:
            data["name"] = self.name
        if self.external_id:
            data["identity"] = {"id": "id_" + self.external_id, "externalId": self.external_id}
        if self.ratelimits:
            data["ratelimits"] = self.ratelimits
        return data


class FakeUnkey:
    def __init__(self, root_key: str = "unkey_root_test") -> None:
        self.root_key = root_key
        self.keys: dict[str, FakeKey] = {}
        self.fail_with: int | None = None
        self.verifications = 0
        self.seen_authorization: list[str] = []
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_key(self, plaintext: str, code: str = "VALID", **fields: Any) -> FakeKey:
        key = FakeKey(
            key_id=fields.pop("key_id", "key_" + uuid.uuid4().hex[:16]), code=code, **fields
        )
        self.keys[plaintext] = key
        return key

    # --- HTTP --------------------------------------------------------------
    async def _verify(self, request: Request) -> JSONResponse:
        self.verifications += 1
        auth = request.headers.get("authorization", "")
        self.seen_authorization.append(auth)
        meta = {"requestId": "req_" + uuid.uuid4().hex[:12]}
        if self.fail_with is not None:
            return JSONResponse(
                {
                    "meta": meta,
                    "error": {
                        "title": "Internal Server Error",
                        "status": self.fail_with,
                        "detail": "fake outage",
                        "type": "about:blank",
                    },
                },
                status_code=self.fail_with,
            )
        if auth != f"Bearer {self.root_key}":
            return JSONResponse(
                {
                    "meta": meta,
                    "error": {
                        "title": "Unauthorized",
                        "status": 401,
                        "detail": "invalid root key",
                        "type": "about:blank",
                    },
                },
                status_code=401,
            )
        body = await request.json()
        known = self.keys.get(body.get("key", ""))
        data = known.data() if known else {"valid": False, "code": "NOT_FOUND"}
        return JSONResponse({"meta": meta, "data": data})

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v2/keys.verifyKey", self._verify, methods=["POST"])])

    # --- lifecycle -----------------------------------------------------------
    def start(self) -> FakeUnkey:
        sock = socket.socket()
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app(), log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        server = self._server

        def run() -> None:
            asyncio.run(server.serve(sockets=[sock]))

        self._thread = threading.Thread(target=run, name="fake-unkey", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake Unkey did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None
