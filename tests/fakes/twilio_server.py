"""A local fake of Twilio's REST API (the part Flow uses), for tests.

It speaks what the official ``twilio`` SDK and Pipecat's serializer send:

- ``POST /2010-04-01/Accounts/{sid}/Calls.json`` (``Calls.create``): form fields ``To``,
  ``From``, ``Twiml``, ``StatusCallback``, ``StatusCallbackEvent`` (repeated),
  ``StatusCallbackMethod``, ``Timeout``; answered 201 with the call resource (``sid``
  ``CA`` + 32 hex digits, ``status`` ``queued``). A number in ``refuse`` is answered 400
  (or its ``refuse_status``) with Twilio's error body (``code``, ``message``,
  ``more_info``, ``status``).
- ``POST /2010-04-01/Accounts/{sid}/Calls/{CallSid}.json`` with ``Status=completed``
  (the hang-up) or ``Status=canceled`` (a call still ringing); answered 200 with the
  call resource.

Both need HTTP basic auth with the account SID and auth token (401 otherwise, as
Twilio answers). Every request is recorded for the test to read.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class PlacedCall:
    sid: str
    to: str
    from_: str
    twiml: str
    status_callback: str
    status_callback_events: list[str]
    timeout: str


@dataclass
class FakeTwilio:
    """The fake's state.

    Parameters:
        account_sid: the account it serves.
        auth_token: the token basic auth must carry.
        refuse: numbers ``Calls.create`` refuses, with Twilio's (code, message).
        refuse_status: the HTTP status of a refused number's answer (400 unless named).
    """

    account_sid: str = "AC" + "0" * 32
    auth_token: str = "twilio-test-token"
    refuse: dict[str, tuple[int, str]] = field(default_factory=dict)
    refuse_status: dict[str, int] = field(default_factory=dict)
    calls: list[PlacedCall] = field(default_factory=list)
    hangups: list[str] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    unauthorized: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeTwilio:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{account}/Calls.json", self._create)
        app.router.add_post("/2010-04-01/Accounts/{account}/Calls/{call}.json", self._update)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _authorized(self, request: web.Request) -> bool:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        ok = request.headers.get("Authorization") == f"Basic {expected}"
        ok = ok and request.match_info["account"] == self.account_sid
        self.unauthorized += not ok
        return ok

    def _resource(self, sid: str, to: str, from_: str, status: str) -> dict[str, Any]:
        return {
            "sid": sid,
            "account_sid": self.account_sid,
            "to": to,
            "from": from_,
            "status": status,
            "direction": "outbound-api",
            "api_version": "2010-04-01",
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Calls/{sid}.json",
        }

    async def _create(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, 20003, "Authenticate")
        form = await request.post()
        to, from_ = str(form.get("To", "")), str(form.get("From", ""))
        if to in self.refuse:
            code, message = self.refuse[to]
            return _error(self.refuse_status.get(to, 400), code, message)
        call = PlacedCall(
            sid="CA" + uuid.uuid4().hex,
            to=to,
            from_=from_,
            twiml=str(form.get("Twiml", "")),
            status_callback=str(form.get("StatusCallback", "")),
            status_callback_events=[str(v) for v in form.getall("StatusCallbackEvent", [])],
            timeout=str(form.get("Timeout", "")),
        )
        self.calls.append(call)
        return web.json_response(self._resource(call.sid, to, from_, "queued"), status=201)

    async def _update(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, 20003, "Authenticate")
        form = await request.post()
        sid = request.match_info["call"]
        status = str(form.get("Status", ""))
        {"completed": self.hangups, "canceled": self.cancels}.get(status, []).append(sid)
        return web.json_response(self._resource(sid, "", "", status or "in-progress"))


def _error(status: int, code: int, message: str) -> web.Response:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return web.json_response(body, status=status)
