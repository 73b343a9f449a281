"""``/talk``: a page to talk to a bot from the browser over WebRTC, with its meter.

The page carries no data and needs no key to load; it asks for an API key, keeps it in
the browser tab's session storage, joins a call with ``POST /api/bot/join``
(``"transport": "webrtc"``) and reads the call's running usage and cost from
``GET /api/bot/{id}`` while it runs. Its assets are served from here (no CDN).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC = Path(__file__).resolve().parents[2] / "talk" / "static"

page = APIRouter(include_in_schema=False)


@page.get("/talk")
async def talk_page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")
