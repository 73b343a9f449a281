"""A local OpenAI-compatible ``POST /v1/chat/completions`` server for tests of the
post-call insights step: non-streaming JSON answers with an ``id`` and ``usage``.

Answers are scripted: each request takes the next :class:`ScriptedAnswer` (content
text, token counts, optional HTTP status); when the script runs out the last answer
repeats. Every request body is kept so tests can check what was sent.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.threaded_http import ThreadedServer, send_json


@dataclass
class ScriptedAnswer:
    content: str
    prompt_tokens: int = 120
    completion_tokens: int = 40
    cached_tokens: int = 0
    status: int = 200


class OpenAIJSONServer(ThreadedServer):
    def __init__(self, answers: list[ScriptedAnswer] | None = None) -> None:
        self.answers: list[ScriptedAnswer] = list(answers or [])
        self.requests: list[dict[str, Any]] = []
        self.response_ids: list[str] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def script(self, *answers: ScriptedAnswer) -> None:
        with self._lock:
            self.answers = list(answers)
            self.requests.clear()
            self.response_ids.clear()

    def _next(self) -> ScriptedAnswer:
        with self._lock:
            if len(self.answers) > 1:
                return self.answers.pop(0)
            return self.answers[0]

    def start(self) -> OpenAIJSONServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.endswith("/chat/completions"):
                    self._answer(404, {"error": {"message": "not found"}})
                    return
                with server._lock:
                    server.requests.append(body)
                answer = server._next()
                if answer.status != 200:
                    self._answer(answer.status, {"error": {"message": "scripted failure"}})
                    return
                response_id = f"chatcmpl-fake-{time.time_ns()}-{next(server._ids)}"
                with server._lock:
                    server.response_ids.append(response_id)
                self._answer(
                    200,
                    {
                        "id": response_id,
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", "gpt-4o-mini"),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": answer.content},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {
                            "prompt_tokens": answer.prompt_tokens,
                            "completion_tokens": answer.completion_tokens,
                            "total_tokens": answer.prompt_tokens + answer.completion_tokens,
                            "prompt_tokens_details": {"cached_tokens": answer.cached_tokens},
                            "completion_tokens_details": {"reasoning_tokens": 0},
                        },
                    },
                )

            def _answer(self, status: int, payload: dict[str, Any]) -> None:
                send_json(self, status, payload)

        self.serve(Handler)
        return self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"
