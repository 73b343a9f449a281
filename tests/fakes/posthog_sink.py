"""A local PostHog capture endpoint for tests: the real ``posthog`` SDK points its
``host`` here and the sink keeps every event it accepts.

It answers ``POST /batch/`` exactly as PostHog does (HTTP 200, ``{"status": 1}``), or,
when switched, with HTTP 500, or not at all (``down()`` closes the socket so uploads
fail with connection refused). Runs in a thread: the SDK uploads from its own threads.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

Mode = Literal["ok", "error"]


class PostHogSink:
    def __init__(self) -> None:
        self.mode: Mode = "ok"
        self.batches: list[dict[str, Any]] = []
        self.requests = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # --- lifecycle -------------------------------------------------------------
    def start(self) -> PostHogSink:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                with sink._lock:
                    sink.requests += 1
                    mode = sink.mode
                if mode == "error" or self.path.rstrip("/") != "/batch":
                    self._answer(500 if mode == "error" else 404, {"error": "sink"})
                    return
                body = json.loads(raw)
                with sink._lock:
                    sink.batches.append(body)
                self._answer(200, {"status": 1})

            def _answer(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def down(self) -> None:
        """Stop listening; the port stays reserved in ``url`` so uploads are refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def stop(self) -> None:
        self.down()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- what arrived ----------------------------------------------------------
    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            every = [e for b in self.batches for e in b.get("batch", [])]
        return [e for e in every if name is None or e.get("event") == name]

    def clear(self) -> None:
        with self._lock:
            self.batches.clear()
            self.requests = 0

    async def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout_seconds: float = 10.0
    ) -> list[dict[str, Any]]:
        """The events once ``predicate`` holds for them (or whatever came by the deadline)."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            events = self.events()
            if predicate(events) or time.monotonic() > deadline:
                return events
            await asyncio.sleep(0.02)
