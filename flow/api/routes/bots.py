"""Bots: join a call, read a call's status, usage and results, stop a call, trickle a
WebRTC caller's ICE candidates.

A join creates the ``workflow_threads`` row (owned by the caller's key) and hands a
:class:`CallRequest` to the runner. The key's budget is checked in the same statement
that creates the row (:func:`flow.db.budgets.admit_call`): a key whose budget is spent
(402 ``budget_exhausted``) or that has as many live calls as it may (429
``too_many_calls``) gets the budget's figures and leaves nothing behind. Capacity is
checked before the row exists, so a refused join leaves nothing behind; a runner that
fills up in between marks the row failed (``join``/``at_capacity``) and the caller gets
the same 503. The Daily meeting token travels in memory only, never to the database. A
``room_url`` must be on a Daily domain and pass the outbound-URL policy
(:mod:`flow.net.daily`), else 400 ``url_not_allowed`` before anything is created.

A ``webrtc`` join carries the caller's SDP offer. It is checked, then answered by the
runner, before the row exists: an offer that cannot be answered is a 400
(``invalid_webrtc_offer``) that leaves nothing behind. The answer comes back in the
202; the caller's media then goes to the instance that answered it.

Another key's thread answers 404, exactly like a thread that does not exist.
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID, uuid4

from fastapi import APIRouter, Header, Response

from flow.api.deps import (
    ApiKeyDep,
    BudgetAlertsDep,
    CallWebhooksDep,
    RunnerDep,
    SettingsDep,
    SupabaseDep,
)
from flow.api.errors import ERROR_RESPONSES, ApiError, ErrorBody
from flow.api.routes.admission import budget_refusal, call_budget
from flow.api.routes.bot_models import (
    BudgetRefusal,
    CandidatesIn,
    JoinRequest,
    JoinResponse,
    SessionDescription,
    StopAnswer,
    StopResponse,
    ThreadOut,
    thread_out,
)
from flow.api.routes.telephony import cancel_ringing, place_call
from flow.bot.contract import (
    AtCapacity,
    CallRequest,
    IceCandidate,
    InvalidIceCandidate,
    InvalidWebRTCOffer,
    WebRTCAnswer,
    WebRTCOffer,
    configuration_problem,
)
from flow.db import budgets, call_state
from flow.db import telephony as telephony_repo
from flow.db import threads as threads_repo
from flow.db.call_state import CallStatus, ErrorStage, StopOutcome
from flow.net.daily import check_room_url
from flow.net.outbound import UrlNotAllowed
from flow.workflows.webhook import WebhookURLError, validate_webhook_url

router = APIRouter(prefix="/api/bot", tags=["bots"], responses=ERROR_RESPONSES)

CAPACITY_RETRY_AFTER_SECONDS = 5


def _limit(field: str, message: str) -> ApiError:
    return ApiError(
        422,
        "limit_exceeded",
        message,
        details=[{"loc": ["body", *field.split(".")], "msg": message, "type": "limit_exceeded"}],
    )


def _check_limits(body: JoinRequest, max_turns: int, max_prompt_chars: int) -> None:
    if body.script is not None and len(body.script) > max_turns:
        raise _limit("script", f"the script has {len(body.script)} turns; at most {max_turns}")
    prompts = {
        "bot_config.system_prompt": body.bot_config.system_prompt,
        "bot_config.greeting": body.bot_config.greeting,
        "analysis_prompt": body.analysis_prompt,
    }
    for field, text in prompts.items():
        if text is not None and len(text) > max_prompt_chars:
            raise _limit(field, f"{field} has {len(text)} characters; at most {max_prompt_chars}")


def _at_capacity(retry_after_seconds: int) -> ApiError:
    return ApiError(
        503,
        "at_capacity",
        "every bot slot is busy; retry after the Retry-After delay",
        headers={"Retry-After": str(retry_after_seconds)},
    )


@router.post(
    "/join",
    status_code=202,
    response_model=JoinResponse,
    response_model_exclude_none=True,
    responses={
        400: {
            "model": ErrorBody,
            "description": "Transport not allowed here, a room_url or webhook_url Flow will "
            "not call, "
            "a WebRTC offer that cannot be answered, or a phone call Twilio refused",
        },
        402: {"model": BudgetRefusal, "description": "The key's budget is spent"},
        429: {
            "model": BudgetRefusal,
            "description": "The key has as many live calls as its budget allows",
        },
    },
)
async def join(
    body: JoinRequest,
    api_key: ApiKeyDep,
    settings: SettingsDep,
    sb: SupabaseDep,
    runner: RunnerDep,
    alerts: BudgetAlertsDep,
    x_flow_user: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> JoinResponse:
    """Start a bot on a call. Answers 202 at once; poll ``GET /api/bot/{id}``. A key
    whose budget is spent is refused (402), as is one with as many live calls as its
    budget allows (429); either creates nothing."""
    if body.transport == "simulated" and settings.flow_env == "production":
        raise ApiError(
            400, "transport_not_allowed", "the simulated transport is disabled in production"
        )
    _check_limits(body, settings.flow_max_script_turns, settings.flow_max_prompt_chars)
    offer = None
    if body.webrtc_offer is not None:
        offer = WebRTCOffer(sdp=body.webrtc_offer.sdp, type=body.webrtc_offer.type)
        if (problem := offer.problem()) is not None:
            raise ApiError(400, "invalid_webrtc_offer", problem)
    problem = configuration_problem(settings)
    if problem is not None:
        # Refuse rather than accept a call that would fail as soon as it starts.
        raise ApiError(503, "bot_not_configured", f"this instance cannot run bots: {problem}")
    if not runner.has_capacity():
        raise _at_capacity(CAPACITY_RETRY_AFTER_SECONDS)

    end_user_id = body.end_user_id or x_flow_user
    room_url = str(body.room_url) if body.room_url else None
    webhook_url = str(body.webhook_url) if body.webhook_url else None
    if room_url:
        try:
            await check_room_url(room_url, settings)
        except UrlNotAllowed as exc:
            raise ApiError(400, "url_not_allowed", f"room_url: {exc}") from None
    if webhook_url:
        try:
            await validate_webhook_url(webhook_url, settings)
        except UrlNotAllowed as exc:
            raise ApiError(400, "url_not_allowed", f"webhook_url: {exc}") from None
        except WebhookURLError as exc:
            raise ApiError(400, "invalid_webhook_url", str(exc)) from None
    if body.to is not None:
        fields = _thread_fields(body, end_user_id, webhook_url)
        tid, sid = await place_call(
            settings, sb, api_key_id=api_key.id, to=body.to, thread_fields=fields
        )
        return JoinResponse(workflow_thread_id=tid, status=CallStatus.RINGING, twilio_call_sid=sid)
    thread_id = str(uuid4())
    answer = await _answer(runner, thread_id, offer) if offer is not None else None
    admission = await budgets.admit_call(
        sb,
        workflow_thread_id=thread_id,
        api_key_id=api_key.id,
        transport=body.transport,
        room_url=room_url,
        script=body.script,
        **_thread_fields(body, end_user_id, webhook_url),
    )
    if not admission["admitted"]:
        if answer is not None:
            await runner.release_webrtc(thread_id)
        if admission["error"] == "budget_exhausted":
            alerts.check_soon(api_key.id)
        raise budget_refusal(admission)
    call = CallRequest(
        workflow_thread_id=thread_id,
        api_key_id=api_key.id,
        transport=body.transport,
        bot_config=body.bot_config,
        room_url=room_url,
        token=body.token,
        script=list(body.script or []),
        end_user_id=end_user_id,
        process_insights=body.process_insights,
        analysis_prompt=body.analysis_prompt,
        webhook_url=webhook_url,
        metadata=body.metadata,
        budget=call_budget(admission, body.bot_config.max_cost_usd),
    )
    try:
        await runner.submit(call)
    except AtCapacity as exc:
        await call_state.fail(
            sb, thread_id, stage=ErrorStage.JOIN, code="at_capacity", message=str(exc)
        )
        raise _at_capacity(exc.retry_after_seconds) from None
    except Exception as exc:
        await call_state.fail(
            sb,
            thread_id,
            stage=ErrorStage.JOIN,
            code="runner_error",
            message=exc.__class__.__name__,
        )
        raise
    return JoinResponse(
        workflow_thread_id=UUID(thread_id),
        status=CallStatus.PENDING,
        webrtc_answer=SessionDescription(sdp=answer.sdp, type=answer.type) if answer else None,
    )


def _thread_fields(
    body: JoinRequest, end_user_id: str | None, webhook_url: str | None
) -> dict[str, Any]:
    return {
        "bot_config": body.bot_config.model_dump(mode="json", exclude_none=True),
        "end_user_id": end_user_id,
        "process_insights": body.process_insights,
        "analysis_prompt": body.analysis_prompt,
        "webhook_url": webhook_url,
        "metadata": body.metadata,
    }


async def _answer(runner: RunnerDep, thread_id: str, offer: WebRTCOffer) -> WebRTCAnswer:
    """The runner's answer to a caller's offer, before the call's thread exists (a
    peer whose call is then never submitted is closed by the runner)."""
    try:
        return await runner.answer_webrtc(thread_id, offer)
    except InvalidWebRTCOffer as exc:
        raise ApiError(400, "invalid_webrtc_offer", str(exc)) from None
    except AtCapacity as exc:
        raise _at_capacity(exc.retry_after_seconds) from None
    except TimeoutError:
        raise ApiError(
            503,
            "webrtc_unavailable",
            "the offer could not be answered in time; retry after the Retry-After delay",
            headers={"Retry-After": str(CAPACITY_RETRY_AFTER_SECONDS)},
        ) from None


async def _owned_thread(sb: Any, thread_id: UUID, api_key_id: str) -> dict[str, Any]:
    row = await threads_repo.get_thread(sb, thread_id, api_key_id)
    if row is None:
        raise ApiError(404, "thread_not_found", f"no call {thread_id} for this API key")
    return row


@router.get(
    "/{workflow_thread_id}",
    response_model=ThreadOut,
    responses={404: {"model": ErrorBody, "description": "No such call for this key"}},
)
async def get_bot(workflow_thread_id: UUID, api_key: ApiKeyDep, sb: SupabaseDep) -> ThreadOut:
    """A call's status, timestamps, error, usage, transcript and insights."""
    row = await _owned_thread(sb, workflow_thread_id, api_key.id)
    return thread_out(row, await telephony_repo.call_sid_of(sb, row))


@router.post(
    "/{workflow_thread_id}/stop",
    status_code=202,
    response_model=StopResponse,
    responses={
        404: {"model": ErrorBody, "description": "No such call for this key"},
        409: {"model": ErrorBody, "description": "The call is not running"},
    },
)
async def stop_bot(
    workflow_thread_id: UUID,
    api_key: ApiKeyDep,
    sb: SupabaseDep,
    runner: RunnerDep,
    settings: SettingsDep,
    call_webhooks: CallWebhooksDep,
) -> StopResponse:
    """End a running call; its usage so far is kept and it is processed as usual. A
    call whose instance is gone (``failed`` in the answer) is ended at once, and its
    ``call.failed`` webhook sent."""
    row = await _owned_thread(sb, workflow_thread_id, api_key.id)
    if CallStatus(row["status"]).finished:
        raise ApiError(409, "already_finished", f"the call is already {row['status']}")
    if await runner.stop(str(workflow_thread_id)):
        return StopResponse(workflow_thread_id=workflow_thread_id, status=StopAnswer.STOPPING)
    ringing = row["status"] == CallStatus.RINGING
    if ringing and await cancel_ringing(settings, sb, str(workflow_thread_id)):
        call_webhooks.send_soon([str(workflow_thread_id)])
        return StopResponse(workflow_thread_id=workflow_thread_id, status=StopAnswer.FAILED)
    # Not running here: the instance running it (behind the same load balancer) picks
    # the request up from the database within a second or two; if no live instance
    # runs it, the database ends it now.
    outcome = await call_state.request_stop(
        sb, workflow_thread_id, stale_seconds=settings.flow_instance_stale_seconds
    )
    if outcome is StopOutcome.NOT_RUNNING:
        raise ApiError(409, "not_running", f"the call is {row['status']}: no bot is running it")
    ended = outcome is StopOutcome.ENDED
    if ended:
        call_webhooks.send_soon([str(workflow_thread_id)])
    status = StopAnswer.FAILED if ended else StopAnswer.STOPPING
    return StopResponse(workflow_thread_id=workflow_thread_id, status=status)


@router.patch(
    "/{workflow_thread_id}/webrtc",
    status_code=204,
    response_class=Response,
    responses={
        400: {"model": ErrorBody, "description": "A candidate that cannot be read"},
        404: {"model": ErrorBody, "description": "No such call for this key"},
        409: {"model": ErrorBody, "description": "Not a WebRTC call running on this instance"},
    },
)
async def add_ice_candidates(
    workflow_thread_id: UUID,
    body: CandidatesIn,
    api_key: ApiKeyDep,
    sb: SupabaseDep,
    runner: RunnerDep,
) -> Response:
    """Trickle the caller's ICE candidates to the bot's peer connection (the join's
    answer already holds the bot's own). Only the instance that answered the join holds
    the peer: another one answers 409 ``not_running_here``."""
    row = await _owned_thread(sb, workflow_thread_id, api_key.id)
    if row["transport"] != "webrtc":
        raise ApiError(409, "not_webrtc", f"the call's transport is {row['transport']}")
    if CallStatus(row["status"]).finished:
        raise ApiError(409, "already_finished", f"the call is already {row['status']}")
    candidates = [
        IceCandidate(c.candidate, sdp_mid=c.sdp_mid, sdp_mline_index=c.sdp_mline_index)
        for c in body.candidates
    ]
    try:
        held = await runner.add_ice_candidates(str(workflow_thread_id), candidates)
    except InvalidIceCandidate as exc:
        raise ApiError(400, "invalid_ice_candidate", str(exc)) from None
    if not held:
        raise ApiError(
            409,
            "not_running_here",
            "this instance holds no WebRTC connection of the call: send candidates to the "
            "instance that answered the join, while the call runs",
        )
    return Response(status_code=204)
