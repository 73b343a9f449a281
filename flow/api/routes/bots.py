"""Bots: join a call, read a call's status, usage and results, stop a call.

A join creates the ``workflow_threads`` row (owned by the caller's key) and hands a
:class:`CallRequest` to the runner. Capacity is checked before the row exists, so a
refused join leaves nothing behind; a runner that fills up in between marks the row
failed (``join``/``at_capacity``) and the caller gets the same 503. The Daily meeting
token travels in memory only, never to the database.

Another key's thread answers 404, exactly like a thread that does not exist.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Header
from pydantic import (
    AnyUrl,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    UrlConstraints,
    field_validator,
    model_validator,
)

from flow.api.deps import ApiKeyDep, RunnerDep, SettingsDep, SupabaseDep
from flow.api.errors import ERROR_RESPONSES, ApiError, ErrorBody
from flow.api.schemas import UsageStats
from flow.bot.contract import AtCapacity, BotConfig, CallRequest
from flow.bot.services import configuration_problem
from flow.db import call_state
from flow.db import threads as threads_repo
from flow.db.call_state import CallStatus, ErrorStage, StopOutcome
from flow.net.outbound import UrlNotAllowed
from flow.workflows.webhook import WebhookURLError, validate_webhook_url

router = APIRouter(prefix="/api/bot", tags=["bots"], responses=ERROR_RESPONSES)

METADATA_MAX_BYTES = 4096
CAPACITY_RETRY_AFTER_SECONDS = 5

HttpsUrl = Annotated[
    AnyUrl, UrlConstraints(allowed_schemes=["https"], host_required=True, max_length=2048)
]
WebUrl = Annotated[
    AnyUrl, UrlConstraints(allowed_schemes=["https", "http"], host_required=True, max_length=2048)
]
Utterance = Annotated[str, StringConstraints(min_length=1, max_length=2000)]
EndUserId = Annotated[str, StringConstraints(min_length=1, max_length=255)]


class JoinRequest(BaseModel):
    """A call to join.

    Parameters:
        transport: ``daily`` (needs ``room_url``) or ``simulated`` (needs ``script``;
            refused when ``FLOW_ENV=production``).
        room_url: the Daily room, an https URL.
        token: the Daily meeting token; used for this call only, never stored.
        script: the caller's utterances, for the simulated transport.
        bot_config: prompt, greeting, model and voice; unset fields take the settings.
        process_insights: extract insights from the transcript after the call.
        end_user_id: who the bot talks to (also read from ``X-Flow-User``).
        metadata: a small JSON object stored with the call (at most 4 KB).
        analysis_prompt: instructions for the insights extraction.
        webhook_url: where the result is posted when the call is processed.
    """

    model_config = ConfigDict(extra="forbid")

    transport: Literal["daily", "simulated"] = "daily"
    room_url: HttpsUrl | None = None
    token: str | None = Field(default=None, min_length=1, max_length=4096)
    script: list[Utterance] | None = Field(default=None, max_length=1000)
    bot_config: BotConfig = Field(default_factory=BotConfig)
    process_insights: bool = True
    end_user_id: EndUserId | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    analysis_prompt: str | None = Field(default=None, min_length=1, max_length=20_000)
    webhook_url: WebUrl | None = None

    @field_validator("metadata")
    @classmethod
    def _small_json(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            size = len(json.dumps(value, allow_nan=False, separators=(",", ":")).encode())
        except ValueError as exc:
            raise ValueError("metadata must be plain JSON (no NaN or Infinity)") from exc
        if size > METADATA_MAX_BYTES:
            raise ValueError(f"metadata is {size} bytes; at most {METADATA_MAX_BYTES} allowed")
        return value

    @model_validator(mode="after")
    def _transport_needs(self) -> JoinRequest:
        if self.transport == "daily":
            if self.room_url is None:
                raise ValueError("the daily transport needs room_url")
            if self.script is not None:
                raise ValueError("script is only for the simulated transport")
        else:
            if not self.script:
                raise ValueError("the simulated transport needs a non-empty script")
            if self.room_url is not None or self.token is not None:
                raise ValueError("room_url and token are only for the daily transport")
        return self


class JoinResponse(BaseModel):
    workflow_thread_id: UUID
    status: Literal[CallStatus.PENDING]


class StopResponse(BaseModel):
    """``stopping``: the bot is ending the call (poll ``GET /api/bot/{id}``);
    ``failed``: no live instance was running it, so it was ended at once."""

    workflow_thread_id: UUID
    status: Literal["stopping", "failed"]


class ThreadError(BaseModel):
    stage: str | None
    code: str | None
    message: str | None


class ThreadOut(BaseModel):
    """A call as its owner sees it. Amounts of money are decimal strings."""

    workflow_thread_id: UUID
    status: CallStatus
    transport: str
    room_url: str | None
    end_user_id: str | None
    process_insights: bool
    bot_config: dict[str, Any]
    metadata: dict[str, Any]
    webhook_url: str | None
    error: ThreadError | None
    usage_stats: UsageStats
    transcript: Any
    insights: Any
    created_at: str
    updated_at: str
    bot_started_at: str | None
    bot_ended_at: str | None


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
    responses={
        400: {
            "model": ErrorBody,
            "description": "Transport not allowed here, or a webhook_url Flow will not call",
        }
    },
)
async def join(
    body: JoinRequest,
    api_key: ApiKeyDep,
    settings: SettingsDep,
    sb: SupabaseDep,
    runner: RunnerDep,
    x_flow_user: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> JoinResponse:
    """Start a bot on a call. Answers 202 at once; poll ``GET /api/bot/{id}``."""
    if body.transport == "simulated" and settings.flow_env == "production":
        raise ApiError(
            400, "transport_not_allowed", "the simulated transport is disabled in production"
        )
    _check_limits(body, settings.flow_max_script_turns, settings.flow_max_prompt_chars)
    problem = configuration_problem(settings)
    if problem is not None:
        # Refuse rather than accept a call that would fail as soon as it starts.
        raise ApiError(503, "bot_not_configured", f"this instance cannot run bots: {problem}")
    if not runner.has_capacity():
        raise _at_capacity(CAPACITY_RETRY_AFTER_SECONDS)

    end_user_id = body.end_user_id or x_flow_user
    room_url = str(body.room_url) if body.room_url else None
    webhook_url = str(body.webhook_url) if body.webhook_url else None
    if webhook_url:
        try:
            await validate_webhook_url(webhook_url, settings)
        except UrlNotAllowed as exc:
            raise ApiError(400, "url_not_allowed", f"webhook_url: {exc}") from None
        except WebhookURLError as exc:
            raise ApiError(400, "invalid_webhook_url", str(exc)) from None
    row = await threads_repo.create_thread(
        sb,
        api_key_id=api_key.id,
        transport=body.transport,
        room_url=room_url,
        bot_config=body.bot_config.model_dump(exclude_none=True),
        script=body.script,
        end_user_id=end_user_id,
        process_insights=body.process_insights,
        analysis_prompt=body.analysis_prompt,
        webhook_url=webhook_url,
        metadata=body.metadata,
    )
    thread_id = str(row["workflow_thread_id"])
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
    return JoinResponse(workflow_thread_id=UUID(thread_id), status=CallStatus.PENDING)


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
    has_error = any(row.get(k) for k in ("error_stage", "error_code", "error_message"))
    return ThreadOut(
        workflow_thread_id=row["workflow_thread_id"],
        status=row["status"],
        transport=row["transport"],
        room_url=row.get("room_url"),
        end_user_id=row.get("end_user_id"),
        process_insights=row["process_insights"],
        bot_config=row.get("bot_config") or {},
        metadata=row.get("metadata") or {},
        webhook_url=row.get("webhook_url"),
        error=ThreadError(
            stage=row.get("error_stage"),
            code=row.get("error_code"),
            message=row.get("error_message"),
        )
        if has_error
        else None,
        usage_stats=UsageStats.from_row(row.get("usage_stats") or {}),
        transcript=row.get("transcript"),
        insights=row.get("insights"),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        bot_started_at=row.get("bot_started_at"),
        bot_ended_at=row.get("bot_ended_at"),
    )


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
) -> StopResponse:
    """End a running call; its usage so far is kept and it is processed as usual. A
    call whose instance is gone (``failed`` in the answer) is ended at once."""
    row = await _owned_thread(sb, workflow_thread_id, api_key.id)
    if CallStatus(row["status"]).finished:
        raise ApiError(409, "already_finished", f"the call is already {row['status']}")
    if await runner.stop(str(workflow_thread_id)):
        return StopResponse(workflow_thread_id=workflow_thread_id, status="stopping")
    # Not running here: the instance running it (behind the same load balancer) picks
    # the request up from the database within a second or two; if no live instance
    # runs it, the database ends it now.
    outcome = await call_state.request_stop(
        sb, workflow_thread_id, stale_seconds=settings.flow_instance_stale_seconds
    )
    if outcome is StopOutcome.NOT_RUNNING:
        raise ApiError(409, "not_running", f"the call is {row['status']}: no bot is running it")
    status: Literal["stopping", "failed"] = "failed" if outcome is StopOutcome.ENDED else "stopping"
    return StopResponse(workflow_thread_id=workflow_thread_id, status=status)
