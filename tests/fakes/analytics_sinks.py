"""Local PostHog and Mixpanel ingestion endpoints for export tests (aiohttp, in-process).

They behave as the vendors document (see the PostHog and Mixpanel sections of the
project's reference notes):

- PostHog ``POST /batch/`` (gzip or plain JSON) answers exactly 200 ``{"status": "Ok"}``,
  or 401 ``invalid_api_key`` for a project key it does not know; ``POST /flags/`` answers
  401 for an unknown key and 200 with flags otherwise (PostHog looks the key up there).
- Mixpanel ``POST /track`` (token inside each event; ``verbose=1`` answers
  ``{"status": 1|0, "error"}``; events older than 5 days are refused) and ``POST
  /import`` (Basic auth with an API secret or a service account plus ``project_id``;
  ``strict=1`` answers 400 with ``failed_records`` while ingesting the valid ones; more
  than 2000 events is a 400).
- Either answers 413 for a body over ``max_body_bytes``, and can be told to fail the
  next requests (``fail_next(status, times, retry_after=...)``), to answer them late
  after ingesting them (``answer_late(seconds, times)``, a sender whose timeout is
  shorter sees a timeout for a batch that was in fact accepted), to answer the next ones
  normally before a planned fault (``pass_next(times)``), to refuse chosen events
  (``reject``), or to hold requests until released (``hold()``). Planned answers are
  used in the order they were planned, one per ingestion request.

Every accepted event is kept in ``events`` (numbers with a fraction as ``Decimal``,
exactly as sent) (in arrival order) so tests can check that
each ledger row arrived exactly once.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

FIVE_DAYS_SECONDS = 5 * 24 * 3600
_ANSWER_AFTER = web.RequestKey("answer_after", float)


@dataclass
class PlannedFailure:
    status: int
    retry_after: str | None = None


@dataclass
class PlannedDelay:
    """Ingest the request as usual, then answer ``seconds`` later."""

    seconds: float


@dataclass
class PlannedPass:
    """Answer as usual (a placeholder that puts later planned answers further out)."""


Planned = PlannedFailure | PlannedDelay | PlannedPass


class _Sink:
    def __init__(self, *, max_body_bytes: int = 10 * 1024 * 1024) -> None:
        self.max_body_bytes = max_body_bytes
        self.events: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.planned: list[Planned] = []
        self.reject: Callable[[dict[str, Any]], str | None] | None = None
        self._released = asyncio.Event()
        self._released.set()
        self.held = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, status: int, times: int = 1, retry_after: str | None = None) -> None:
        self.planned.extend(PlannedFailure(status, retry_after) for _ in range(times))

    def answer_late(self, seconds: float, times: int = 1) -> None:
        self.planned.extend(PlannedDelay(seconds) for _ in range(times))

    def pass_next(self, times: int = 1) -> None:
        self.planned.extend(PlannedPass() for _ in range(times))

    def hold(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    async def start(self) -> _Sink:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[_answer_late])
        app.add_routes(self.routes())
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _body(self, request: web.Request) -> bytes | web.Response:
        """The request body, or the answer to give instead (413, planned failure)."""
        raw = await request.read()
        self.requests.append({"path": request.path, "query": dict(request.query)})
        if not self._released.is_set():
            self.held += 1
            await self._released.wait()
            if request.transport is None or request.transport.is_closing():
                # The sender went away before an answer: nothing was accepted.
                return web.Response(status=499)
        planned = self.planned.pop(0) if self.planned else PlannedPass()
        if isinstance(planned, PlannedDelay):
            request[_ANSWER_AFTER] = planned.seconds
        if isinstance(planned, PlannedFailure):
            headers = {"Retry-After": planned.retry_after} if planned.retry_after else None
            return web.json_response(
                {"error": f"injected failure {planned.status}"},
                status=planned.status,
                headers=headers,
            )
        # The size on the wire (aiohttp may already have inflated a gzip body).
        if (request.content_length or len(raw)) > self.max_body_bytes:
            return web.json_response({"error": "request entity too large"}, status=413)
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        return raw


@web.middleware
async def _answer_late(request: web.Request, handler: Any) -> web.StreamResponse:
    """Holds the answer of a request planned to be late; what it ingested stays."""
    response: web.StreamResponse = await handler(request)
    delay = request.get(_ANSWER_AFTER)
    if delay:
        await asyncio.sleep(delay)
    return response


class PostHogSink(_Sink):
    """PostHog's capture (``/batch/``) and flags (``/flags/``) endpoints."""

    def __init__(self, valid_keys: set[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.valid_keys = valid_keys
        self.historical_flags: list[bool] = []

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/batch/", self._batch), web.post("/flags/", self._flags)]

    @staticmethod
    def _invalid_key() -> web.Response:
        return web.json_response(
            {
                "type": "authentication_error",
                "code": "invalid_api_key",
                "detail": "Project API key invalid. You can find your project API key in "
                "PostHog project settings.",
                "attr": None,
            },
            status=401,
        )

    async def _batch(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        payload = json.loads(body, parse_float=Decimal)  # keep numbers as sent
        if payload.get("api_key") not in self.valid_keys:
            return self._invalid_key()
        batch = payload.get("batch") or []
        self.historical_flags.append(bool(payload.get("historical_migration")))
        self.events.extend(batch)
        return web.json_response({"status": "Ok"}, status=200)

    async def _flags(self, request: web.Request) -> web.Response:
        payload = json.loads(await request.read() or b"{}")
        if payload.get("api_key") not in self.valid_keys:
            return self._invalid_key()
        return web.json_response({"featureFlags": {}, "errorsWhileComputingFlags": False})


class MixpanelSink(_Sink):
    """Mixpanel's ``/track`` and ``/import`` ingestion endpoints."""

    def __init__(
        self,
        valid_tokens: set[str],
        *,
        api_secrets: set[str] | None = None,
        service_accounts: dict[str, tuple[str, str]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.valid_tokens = valid_tokens
        self.api_secrets = api_secrets or set()
        # username -> (secret, project_id)
        self.service_accounts = service_accounts or {}
        self.paths: list[str] = []

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/track", self._track), web.post("/import", self._import)]

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        if user in self.api_secrets and password == "":
            return True
        account = self.service_accounts.get(user)
        return account is not None and account == (password, request.query.get("project_id"))

    @staticmethod
    def _events(raw: bytes, content_type: str) -> list[dict[str, Any]]:
        if content_type.startswith("application/x-www-form-urlencoded"):
            raw = parse_qs(raw.decode()).get("data", ["[]"])[0].encode()
        text = raw.decode().strip()
        if not text:
            return []
        if text.startswith("["):
            events: list[dict[str, Any]] = json.loads(text, parse_float=Decimal)
            return events
        return [json.loads(line, parse_float=Decimal) for line in text.splitlines() if line.strip()]

    async def _track(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        events = self._events(body, request.content_type)
        verbose = request.query.get("verbose") == "1"

        def answer(ok: bool, error: str | None = None) -> web.Response:
            if verbose:
                return web.json_response({"status": 1 if ok else 0, "error": error})
            return web.Response(text="1" if ok else "0")

        if len(events) > 2000:
            return web.json_response({"error": "max 2000 events per request"}, status=400)
        now = time.time()
        for e in events:
            props = e.get("properties", {})
            if props.get("token") not in self.valid_tokens:
                return answer(False, "Invalid token")
            t = float(props.get("time", 0))
            seconds = t / 1000 if t > 1e11 else t
            if seconds < now - FIVE_DAYS_SECONDS:
                return answer(False, "event older than 5 days: use /import")
        self.paths.extend("/track" for _ in events)
        self.events.extend(events)
        return answer(True)

    async def _import(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        if not self._authorized(request):
            return web.json_response(
                {"code": 401, "error": "Invalid credentials", "status": "Unauthorized"},
                status=401,
            )
        events = self._events(body, request.content_type)
        if len(events) > 2000:
            return web.json_response(
                {"code": 400, "error": "max 2000 events per request", "status": "Bad Request"},
                status=400,
            )
        failed: list[dict[str, Any]] = []
        accepted: list[dict[str, Any]] = []
        for index, e in enumerate(events):
            props = e.get("properties", {})
            reason = self.reject(e) if self.reject else None
            insert_id = str(props.get("$insert_id", ""))
            if reason is None and not (
                0 < len(insert_id) <= 36 and insert_id.replace("-", "").isalnum()
            ):
                reason = "'$insert_id' must be 1-36 letters, digits or dashes"
            if reason is None and not props.get("time"):
                reason = "'properties.time' is required"
            if reason is None and props.get("token") not in self.valid_tokens:
                reason = "'properties.token' does not match the project"
            if reason is not None:
                failed.append(
                    {
                        "index": index,
                        "$insert_id": insert_id,
                        "field": "properties",
                        "message": reason,
                    }
                )
            else:
                accepted.append(e)
        self.paths.extend("/import" for _ in accepted)
        self.events.extend(accepted)
        if failed and request.query.get("strict") == "1":
            return web.json_response(
                {
                    "code": 400,
                    "error": "some data points in the request failed validation",
                    "failed_records": failed,
                    "num_records_imported": len(accepted),
                    "status": "Bad Request",
                },
                status=400,
            )
        return web.json_response(
            {"code": 200, "num_records_imported": len(accepted), "status": "OK"}
        )
