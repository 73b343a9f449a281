"""The bodies of the bots routes (:mod:`flow.api.routes.bots`): what a join may ask for
and what the API answers about a call."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AliasChoices,
    AnyUrl,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    UrlConstraints,
    field_validator,
    model_validator,
)

from flow.api.schemas import UsageStats
from flow.bot.contract import BotConfig
from flow.db.call_state import CallStatus

METADATA_MAX_BYTES = 4096

HttpsUrl = Annotated[
    AnyUrl, UrlConstraints(allowed_schemes=["https"], host_required=True, max_length=2048)
]
WebUrl = Annotated[
    AnyUrl, UrlConstraints(allowed_schemes=["https", "http"], host_required=True, max_length=2048)
]
Utterance = Annotated[str, StringConstraints(min_length=1, max_length=2000)]
EndUserId = Annotated[str, StringConstraints(min_length=1, max_length=255)]
PhoneNumber = Annotated[str, StringConstraints(pattern=r"^\+[1-9][0-9]{1,14}$")]


class SessionDescription(BaseModel):
    """An SDP offer or answer, as a browser's ``RTCSessionDescription`` serialises it.
    Its checks (at most 32 KB, an audio section, ...) answer 400 ``invalid_webrtc_offer``.
    """

    sdp: str
    type: str = Field(max_length=20)


class JoinRequest(BaseModel):
    """A call to join.

    Parameters:
        transport: ``daily`` (needs ``room_url``), ``webrtc`` (needs ``webrtc_offer``)
            ``twilio`` (a phone call Flow places, needs ``to``) or ``simulated`` (needs
            ``script``; refused when ``FLOW_ENV=production``).
        room_url: the Daily room, an https URL.
        token: the Daily meeting token; used for this call only, never stored.
        script: the caller's utterances, for the simulated transport.
        webrtc_offer: the caller's SDP offer (``{"sdp", "type": "offer"}``), for webrtc.
        to: the number to call, in E.164 (``+15550001111``), for twilio.
        bot_config: mode (``pipeline`` or ``realtime``), prompt, greeting, model and
            voice; unset fields take the settings.
        process_insights: extract insights from the transcript after the call.
        end_user_id: who the bot talks to (also read from ``X-Flow-User``).
        metadata: a small JSON object stored with the call (at most 4 KB).
        analysis_prompt: instructions for the insights extraction.
        webhook_url: where the result is posted when the call is processed.
    """

    model_config = ConfigDict(extra="forbid")

    transport: Literal["daily", "simulated", "webrtc", "twilio"] = "daily"
    room_url: HttpsUrl | None = None
    token: str | None = Field(default=None, min_length=1, max_length=4096)
    script: list[Utterance] | None = Field(default=None, max_length=1000)
    webrtc_offer: SessionDescription | None = None
    to: PhoneNumber | None = None
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
        if self.transport == "daily" and self.room_url is None:
            raise ValueError("the daily transport needs room_url")
        if self.transport == "simulated" and not self.script:
            raise ValueError("the simulated transport needs a non-empty script")
        if self.transport == "webrtc" and self.webrtc_offer is None:
            raise ValueError("the webrtc transport needs webrtc_offer")
        if self.transport != "daily" and (self.room_url is not None or self.token is not None):
            raise ValueError("room_url and token are only for the daily transport")
        if self.transport != "simulated" and self.script is not None:
            raise ValueError("script is only for the simulated transport")
        if self.transport != "webrtc" and self.webrtc_offer is not None:
            raise ValueError("webrtc_offer is only for the webrtc transport")
        if self.bot_config.mode == "realtime" and self.transport == "simulated":
            raise ValueError(
                "realtime mode needs a transport that carries the caller's voice (daily, webrtc or "
                "twilio): the simulated caller's script is text"
            )
        if (self.transport == "twilio") != (self.to is not None):
            raise ValueError("the twilio transport needs to (an E.164 number), and only it")
        return self


class JoinResponse(BaseModel):
    """``webrtc_answer`` (webrtc joins only) is the bot's SDP answer, with its ICE
    candidates; a twilio join answers ``ringing`` with Twilio's call SID."""

    workflow_thread_id: UUID
    status: Literal[CallStatus.PENDING, CallStatus.RINGING]
    webrtc_answer: SessionDescription | None = None
    twilio_call_sid: str | None = None


class CandidateIn(BaseModel):
    """One ICE candidate (``candidate`` empty: the end of candidates); the camelCase
    names a browser's ``RTCIceCandidate.toJSON()`` uses are accepted too."""

    candidate: str = Field(max_length=1024)
    sdp_mid: str | None = Field(
        default=None, max_length=64, validation_alias=AliasChoices("sdp_mid", "sdpMid")
    )
    sdp_mline_index: int | None = Field(
        default=None,
        ge=0,
        le=64,
        validation_alias=AliasChoices("sdp_mline_index", "sdpMLineIndex"),
    )


class CandidatesIn(BaseModel):
    candidates: list[CandidateIn] = Field(min_length=1, max_length=64)


class StopAnswer(StrEnum):
    """What a stop request did: the bot is ending the call, or it was ended at once."""

    STOPPING = "stopping"
    FAILED = CallStatus.FAILED.value


class StopResponse(BaseModel):
    """``stopping``: the bot is ending the call (poll ``GET /api/bot/{id}``);
    ``failed``: no live instance was running it (or a phone call Flow placed was still
    ringing: it is canceled), so it was ended at once."""

    workflow_thread_id: UUID
    status: StopAnswer


class ThreadError(BaseModel):
    stage: str | None
    code: str | None
    message: str | None


class ThreadOut(BaseModel):
    """A call as its owner sees it. Amounts of money are decimal strings; a phone call
    has its Twilio call SID."""

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
    twilio_call_sid: str | None = None
    end_reason: str | None = Field(
        description="How the call ended (null while it runs): completed, stopped, "
        "max_duration, idle, budget_exhausted, shutdown, cancelled, error, instance_lost"
    )


def thread_out(row: dict[str, Any], call_sid: str | None = None) -> ThreadOut:
    """A ``workflow_threads`` row as the API shows it (a phone call with its leg's SID)."""
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
        twilio_call_sid=call_sid,
        end_reason=row.get("end_reason"),
    )


class BudgetRefusal(BaseModel):
    """A join the key's budget refused (402 ``budget_exhausted``, 429 ``too_many_calls``):
    the budget's figures beside the error, money as decimal strings."""

    error: str
    message: str
    spent_usd: str
    reserved_usd: str
    remaining_usd: str
    limit_usd: str
    resets_at: str | None
    live_calls: int
    max_concurrent_calls: int | None
