"""A local PostHog capture endpoint for ``flow demo`` when no PostHog is configured.

It accepts what the posthog SDK sends (``POST /batch/``, answering exactly 200) and
keeps the events in memory so the demo can say what analysts would see.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

from aiohttp import web


class DemoPostHogSink:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _batch(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        payload = json.loads(raw or b"{}")
        self.events.extend(payload.get("batch", []))
        return web.json_response({"status": 1})

    async def start(self, host: str = "127.0.0.1") -> str:
        app = web.Application()
        app.router.add_post("/batch/", self._batch)
        app.router.add_post("/i/v0/e/", self._batch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, 0)
        await site.start()
        self.url = f"http://{host}:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def count(self, event: str) -> int:
        return sum(1 for e in self.events if e.get("event") == event)
