"""The plumbing of the small JSON fakes served from a thread of their own, so that they
answer while the test's event loop waits (on a subprocess, or a blocking client)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

# answer(path, query, Authorization header) -> (status, JSON payload)
GetAnswer = Callable[[str, dict[str, list[str]], str], tuple[int, Any]]


def send_json(handler: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
    """Answer ``payload`` as JSON with ``status``."""
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class ThreadedServer:
    """Serves a request handler class on a free local port until :meth:`stop`."""

    port = 0
    _server: ThreadingHTTPServer | None = None

    def serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def serve_get(self, answer: GetAnswer) -> None:
        """Serve GET requests with ``answer``, quietly (the read-only vendor APIs)."""

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                auth = self.headers.get("Authorization", "")
                send_json(self, *answer(url.path, parse_qs(url.query), auth))

        self.serve(Handler)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
