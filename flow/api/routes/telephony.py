"""Phone calls over Twilio: the webhooks Twilio calls, its Media Stream, and the calls
Flow places (``POST /api/bot/join`` with ``"transport": "twilio"``).

- ``POST /api/telephony/twilio/voice``: a call to a Flow number. Its thread is created
  for the key that owns the number and Twilio is answered with ``<Connect><Stream>``
  carrying the call's one-time stream token; an unknown number is answered with a
  polite ``<Say>`` and ``<Hangup/>``.
- ``POST /api/telephony/twilio/status``: Twilio's status callback. A call that ended
  before its stream started (busy, no answer, failed, canceled, or hung up first) ends
  ``failed`` with that reason; it metered nothing.
- ``WS /api/telephony/twilio/stream``: the Media Stream. Only a valid unused token of
  the very call streaming is accepted; anything else is closed with 1008 (policy
  violation) and nothing runs. The call runs on the instance holding the socket.

Both webhooks check ``X-Twilio-Signature`` (:mod:`flow.telephony.twilio_api`): a
missing or bad one is 403 and changes nothing. They need no API key: Twilio's signature
is their authentication.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import parse_qsl
from uuid import UUID, uuid4

from fastapi import APIRouter, Header, Request, Response, WebSocket, WebSocketDisconnect

from flow.api.deps import RunnerDep, SettingsDep, SupabaseDep
from flow.api.errors import ApiError, ErrorBody
from flow.api.routes.admission import budget_refusal, stream_budget
from flow.bot.contract import AtCapacity, BotConfig, CallRequest, configuration_problem
from flow.bot.twilio_stream import TwilioStream
from flow.config import Settings
from flow.db import budgets, call_state, numbers
from flow.db import telephony as telephony_repo
from flow.db import threads as threads_repo
from flow.db.call_state import CallStatus, ErrorStage
from flow.db.telephony import Direction
from flow.telephony import twilio_api
from flow.telephony.numbers import NumberConfig

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/telephony", tags=["telephony"])

UNKNOWN_NUMBER = "Sorry, this number is not in service. Goodbye."
BUSY = "Sorry, all our lines are busy right now. Please call again later. Goodbye."
OVER_BUDGET = "Sorry, this line cannot take calls right now. Goodbye."
# How long Twilio has to send "connected" and "start" once the socket is open.
START_TIMEOUT_SECONDS = 10.0
# Twilio's final statuses of a call that never streamed: error_code and message.
UNSTREAMED_ENDS = {
    "busy": ("busy", "the line was busy"),
    "no-answer": ("no_answer", "nobody answered"),
    "failed": ("call_failed", "Twilio could not connect the call"),
    "canceled": ("canceled", "the call was canceled before it was answered"),
    "completed": ("no_stream", "the call ended before its media stream started"),
}
STOPPED_RINGING = "stopped while it was ringing"
RETRY_AFTER_SECONDS = 5
POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013
TWIML: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/xml": {}}, "description": "TwiML"}
}
REFUSED: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorBody, "description": "No valid X-Twilio-Signature"},
}


async def _signed_form(
    request: Request, settings: Settings, signature: str | None
) -> dict[str, str]:
    """The POSTed parameters of a request Twilio signed; 403 otherwise (always, when
    phone calls are off: nothing could be checked)."""
    if problem := settings.telephony_problem():
        raise ApiError(403, "telephony_not_configured", f"phone calls are off: {problem}")
    body = (await request.body()).decode("utf-8", "replace")
    params = dict(parse_qsl(body, keep_blank_values=True))
    url = twilio_api.public_url(settings, request.url.path)
    if request.url.query:
        url += "?" + request.url.query
    if not twilio_api.signature_ok(settings, url, params, signature):
        raise ApiError(403, "invalid_signature", "the request is not signed by Twilio")
    return params


def _twiml(xml: str) -> Response:
    return Response(content=xml, media_type="application/xml")


@router.post("/twilio/voice", response_class=Response, responses={**TWIML, **REFUSED})
async def voice(
    request: Request,
    settings: SettingsDep,
    sb: SupabaseDep,
    runner: RunnerDep,
    x_twilio_signature: Annotated[str | None, Header()] = None,
) -> Response:
    """Twilio's Voice webhook: answer a call to one of Flow's numbers."""
    params = await _signed_form(request, settings, x_twilio_signature)
    to, caller, call_sid = params.get("To", ""), params.get("From", ""), params.get("CallSid", "")
    number = await numbers.find_answering(sb, to) if to and call_sid else None
    if number is None:
        log.info("call %s to %s: not a number Flow answers", call_sid, to)
        return _twiml(twilio_api.goodbye_twiml(UNKNOWN_NUMBER))
    if configuration_problem(settings) or not runner.has_capacity():
        return _twiml(twilio_api.goodbye_twiml(BUSY))
    config = NumberConfig.model_validate(number["config"])
    thread_id = str(uuid4())
    end_user_id = twilio_api.caller_id(settings, caller) if caller else None
    # Checked against the key's budget, and the thread created, in one statement.
    admission = await budgets.admit_call(
        sb,
        workflow_thread_id=thread_id,
        api_key_id=number["api_key_id"],
        transport="twilio",
        end_user_id=end_user_id,
        **config.thread_fields(),
    )
    if not admission["admitted"]:
        log.info("call %s to %s: refused, %s", call_sid, to, admission["error"])
        return _twiml(twilio_api.goodbye_twiml(OVER_BUDGET))
    token, token_hash = telephony_repo.new_stream_token()
    await telephony_repo.create_call(
        sb,
        workflow_thread_id=thread_id,
        direction=Direction.INBOUND,
        flow_number=to,
        remote_party=end_user_id,
        token_hash=token_hash,
        token_seconds=settings.flow_telephony_stream_token_seconds,
        call_sid=call_sid,
    )
    return _twiml(twilio_api.stream_twiml(settings, token))


@router.post("/twilio/status", status_code=204, response_class=Response, responses=REFUSED)
async def status(
    request: Request,
    settings: SettingsDep,
    sb: SupabaseDep,
    x_twilio_signature: Annotated[str | None, Header()] = None,
) -> Response:
    """Twilio's status callback: a call that ended without streaming fails with why."""
    params = await _signed_form(request, settings, x_twilio_signature)
    call_sid, twilio_status = params.get("CallSid", ""), params.get("CallStatus", "")
    if not call_sid:
        return Response(status_code=204)
    ended = UNSTREAMED_ENDS.get(twilio_status)
    thread_id = await telephony_repo.end_unstreamed(sb, call_sid, twilio_status) if ended else None
    if ended is None or thread_id is None:
        await telephony_repo.note_status(sb, call_sid, twilio_status)
        return Response(status_code=204)
    code, message = ended
    if await call_state.fail(sb, thread_id, stage=ErrorStage.CALL, code=code, message=message):
        workflow = getattr(request.app.state, "workflow", None)
        row = await threads_repo.get_thread(sb, thread_id)
        if workflow is not None and row is not None:
            await workflow.call_finished(call_request_from(row), None)
    return Response(status_code=204)


def call_request_from(row: dict[str, Any], stream: TwilioStream | None = None) -> CallRequest:
    """The call a thread row describes (what the runner and post-call steps take)."""
    return CallRequest(
        workflow_thread_id=str(row["workflow_thread_id"]),
        api_key_id=str(row["api_key_id"]),
        transport="twilio",
        bot_config=BotConfig.model_validate(row.get("bot_config") or {}),
        end_user_id=row.get("end_user_id"),
        process_insights=row["process_insights"],
        analysis_prompt=row.get("analysis_prompt"),
        webhook_url=row.get("webhook_url"),
        metadata=row.get("metadata") or {},
        stream=stream,
    )


async def _read_start(websocket: WebSocket) -> dict[str, Any]:
    """Twilio's ``start`` message (after ``connected``); ValueError for anything else."""
    for _ in range(3):
        message = json.loads(await websocket.receive_text())
        if not isinstance(message, dict):
            break
        if message.get("event") == "start" and isinstance(message.get("start"), dict):
            return message
        if message.get("event") != "connected":
            break
    raise ValueError("the stream did not start with connected, start")


@router.websocket("/twilio/stream")
async def stream(websocket: WebSocket) -> None:
    """Twilio's Media Stream of a call Flow answered or placed: run its bot."""
    state = websocket.app.state
    settings: Settings = state.settings
    await websocket.accept()
    try:
        message = await asyncio.wait_for(_read_start(websocket), START_TIMEOUT_SECONDS)
        started_at = datetime.now(UTC)
        start = message["start"]
        params = start.get("customParameters") or {}
        token, call_sid = params.get(twilio_api.TOKEN_PARAMETER), start.get("callSid")
        stream_sid = start.get("streamSid") or message.get("streamSid")
        if not (isinstance(token, str) and isinstance(call_sid, str) and stream_sid):
            raise ValueError("the start message lacks the token, callSid or streamSid")
    except (TimeoutError, ValueError, KeyError, WebSocketDisconnect) as exc:
        log.warning("a Media Stream was refused: %s", exc.__class__.__name__)
        await _close(websocket, POLICY_VIOLATION)
        return
    thread_id, refused = await telephony_repo.claim_stream(state.sb, token, call_sid, stream_sid)
    row = await threads_repo.get_thread(state.sb, thread_id) if thread_id else None
    leg = await telephony_repo.get_call(state.sb, thread_id) if thread_id else None
    if row is None or leg is None:
        log.warning("call %s: its Media Stream was refused (token %s)", call_sid, refused)
        await _close(websocket, POLICY_VIOLATION)
        return
    media = TwilioStream(websocket, str(stream_sid), call_sid, leg["direction"], started_at)
    call = call_request_from(row, media)
    asked = call.bot_config.max_cost_usd
    call.budget = await stream_budget(state.sb, call.api_key_id, asked)
    try:
        await state.runner.submit(call)
    except AtCapacity as exc:
        await call_state.fail(
            state.sb,
            row["workflow_thread_id"],
            stage=ErrorStage.CALL,
            code="at_capacity",
            message=str(exc),
        )
        await _close(websocket, TRY_AGAIN_LATER)
        return
    try:  # the websocket is the call's until it ends
        await asyncio.wait_for(media.done.wait(), settings.flow_max_call_seconds + 60)
    except TimeoutError:
        log.warning("call %s: still holding its Media Stream; let go", row["workflow_thread_id"])


async def _close(websocket: WebSocket, code: int) -> None:
    try:
        await websocket.close(code)
    except (RuntimeError, WebSocketDisconnect):  # already closed by the other side
        pass


async def place_call(
    settings: Settings,
    sb: Any,
    *,
    api_key_id: str,
    to: str,
    thread_fields: dict[str, Any],
) -> tuple[UUID, str]:
    """Place a call from ``TWILIO_FROM_NUMBER`` to ``to`` for a join: its thread rings
    once Twilio took it. Returns the thread id and the call SID."""
    problem = settings.telephony_problem() or (
        None if settings.twilio_from_number else "TWILIO_FROM_NUMBER not set"
    )
    if problem:
        raise ApiError(
            400, "transport_not_allowed", f"phone calls are off on this server: {problem}"
        )
    thread_id = str(uuid4())
    callee = thread_fields.get("end_user_id") or twilio_api.caller_id(settings, to)
    fields = {**thread_fields, "end_user_id": callee}
    admission = await budgets.admit_call(
        sb, workflow_thread_id=thread_id, api_key_id=api_key_id, transport="twilio", **fields
    )
    if not admission["admitted"]:
        raise budget_refusal(admission)
    token, token_hash = telephony_repo.new_stream_token()
    await telephony_repo.create_call(
        sb,
        workflow_thread_id=thread_id,
        direction=Direction.OUTBOUND,
        flow_number=settings.twilio_from_number,
        remote_party=callee,
        token_hash=token_hash,
        # The callee answers (or not) within the ring time; then the stream starts.
        token_seconds=settings.flow_telephony_stream_token_seconds + twilio_api.RING_SECONDS,
    )
    try:
        call_sid = await twilio_api.place_call(
            settings, to=to, twiml=twilio_api.stream_twiml(settings, token)
        )
    except twilio_api.TwilioError as exc:
        # The message is Flow's own (Twilio's status and error code): Twilio's text is
        # only logged.
        await call_state.fail(
            sb, thread_id, stage=ErrorStage.JOIN, code="call_failed", message=str(exc)
        )
        if exc.retryable:
            retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
            message = f"Twilio could not place the call now: {exc}"
            raise ApiError(503, "telephony_unavailable", message, headers=retry) from None
        raise ApiError(400, "call_not_placed", f"Twilio refused the call: {exc}") from None
    await telephony_repo.set_call_sid(sb, thread_id, call_sid)
    await call_state.move(sb, thread_id, CallStatus.RINGING)
    return UUID(thread_id), call_sid


async def cancel_ringing(settings: Settings, sb: Any, thread_id: str) -> bool:
    """Stop a call Flow placed that has not been answered: its token is spent (a stream
    that comes anyway is refused), Twilio cancels it, it ends ``failed``/``canceled``.
    False when its stream had already started (the call runs: stop it as any other)."""
    leg = await telephony_repo.get_call(sb, thread_id)
    sid = leg.get("call_sid") if leg else None
    if not sid or await telephony_repo.end_unstreamed(sb, sid, "canceled") is None:
        return False
    try:
        await twilio_api.cancel_call(settings, sid)
    except twilio_api.TwilioError as exc:
        log.warning("call %s: Twilio did not cancel it: %s", thread_id, exc)
    await call_state.fail(
        sb, thread_id, stage=ErrorStage.CALL, code="canceled", message=STOPPED_RINGING
    )
    return True
