"""What the API hands the bot runner, and what it expects back.

The join route builds a :class:`CallRequest` (the thread row plus the secrets that are
never stored, like a Daily meeting token) and submits it to a :class:`CallRunner`.
Keeping this contract in one small module lets the API be tested against any runner
(tests observe submissions) while the real one lives in ``flow.bot.runner``.

A WebRTC join takes two steps, so that an offer the runner cannot answer leaves no
thread behind: :meth:`CallRunner.answer_webrtc` answers the caller's SDP offer for a
thread id chosen by the route, then the thread is created and the call submitted under
that id. The checks an offer must pass before any of that (:meth:`WebRTCOffer.problem`)
are plain text checks, so the API needs no WebRTC library.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from flow.bot.twilio_stream import TwilioStream
from flow.config import Settings
from flow.db.call_state import EndReason
from flow.metering.events import UsageEvent

Transport = Literal["daily", "simulated", "webrtc", "twilio"]
# pipeline: STT -> LLM -> TTS; realtime: one speech-to-speech model hears and speaks.
BotMode = Literal["pipeline", "realtime"]
# The voices OpenAI's speech-to-speech models speak with.
REALTIME_VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "sage",
    "shimmer",
    "verse",
    "marin",
    "cedar",
)


def is_realtime_model(model: str) -> bool:
    """OpenAI names its speech-to-speech models ``gpt-realtime``, ``gpt-realtime-mini``,
    ``gpt-4o-realtime-preview``, ...; no other model can take a realtime session."""
    return "realtime" in model.lower()


# The largest SDP offer a join may send (a browser's audio offer is 2-6 KB).
MAX_OFFER_BYTES = 32 * 1024


@dataclass(frozen=True)
class WebRTCOffer:
    """A caller's SDP offer (``{"sdp", "type": "offer"}`` as a browser makes it)."""

    sdp: str
    type: str = "offer"

    def problem(self) -> str | None:
        """Why this cannot be a WebRTC audio offer, or None when it may be one."""
        if self.type != "offer":
            return f"type must be 'offer', not {self.type[:20]!r}"
        size = len(self.sdp.encode("utf-8", "replace"))
        if size > MAX_OFFER_BYTES:
            return f"the SDP is {size} bytes; at most {MAX_OFFER_BYTES} allowed"
        lines = [line for line in self.sdp.replace("\r\n", "\n").split("\n") if line]
        if not lines or lines[0] != "v=0":
            return "not an SDP offer: it must start with v=0"
        for n, line in enumerate(lines, 1):
            if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
                return f"not an SDP offer: line {n} is not a <type>=<value> line"
        starts = [n for n, line in enumerate(lines) if line.startswith("m=")]
        audio = [n for n in starts if lines[n].startswith("m=audio ")]
        if not audio:
            return "the offer has no audio section (m=audio): the caller must send audio"
        end = next((n for n in starts if n > audio[0]), len(lines))
        for direction in ("a=recvonly", "a=inactive"):
            if direction in lines[audio[0] : end]:
                return f"the offer's audio section is {direction[2:]}: the caller must send audio"
        for attribute in ("ice-ufrag", "ice-pwd", "fingerprint"):
            if not any(line.startswith(f"a={attribute}:") for line in lines):
                return f"the offer has no a={attribute} line"
        return None


@dataclass(frozen=True)
class WebRTCAnswer:
    """The runner's SDP answer; it carries the runner's ICE candidates."""

    sdp: str
    type: str = "answer"


@dataclass(frozen=True)
class IceCandidate:
    """One trickled ICE candidate (``candidate`` empty: the end of candidates)."""

    candidate: str
    sdp_mid: str | None = None
    sdp_mline_index: int | None = None


class InvalidWebRTCOffer(ValueError):
    """The offer cannot be answered (a 400 for the caller): the message says why."""


class InvalidIceCandidate(ValueError):
    """A trickled candidate cannot be read (a 400 for the caller)."""


class BotConfig(BaseModel):
    """How the bot behaves on one call; unset fields take the defaults from settings.

    Parameters:
        mode: ``pipeline`` (STT -> LLM -> TTS) or ``realtime`` (one speech-to-speech
            model, OpenAI Realtime).
        system_prompt: the LLM's system instruction.
        greeting: what the bot says first (empty: it waits for the caller).
        llm_model: the OpenAI model name (a Realtime model in realtime mode).
        voice: the TTS voice (one of :data:`REALTIME_VOICES` in realtime mode).
        max_cost_usd: the most this call may cost, in USD; it lowers (never raises) the
            key's ``max_call_usd``. The call ends with a goodbye before crossing it.
    """

    model_config = ConfigDict(extra="forbid")

    mode: BotMode = "pipeline"
    system_prompt: str | None = Field(default=None, max_length=20_000)
    greeting: str | None = Field(default=None, max_length=2_000)
    llm_model: str | None = Field(default=None, max_length=200)
    voice: str | None = Field(default=None, max_length=100)
    max_cost_usd: Decimal | None = Field(
        default=None, gt=0, le=1_000_000, max_digits=20, decimal_places=10, allow_inf_nan=False
    )

    @model_validator(mode="after")
    def _fits_the_mode(self) -> BotConfig:
        realtime = self.mode == "realtime"
        if self.llm_model is not None and is_realtime_model(self.llm_model) != realtime:
            if realtime:
                raise ValueError(
                    f"llm_model {self.llm_model!r} is not a speech-to-speech model: realtime "
                    "mode needs an OpenAI Realtime model (gpt-realtime, gpt-realtime-mini, ...)"
                )
            raise ValueError(
                f"llm_model {self.llm_model!r} is a speech-to-speech model: it needs "
                "mode 'realtime'"
            )
        if realtime and self.voice is not None and self.voice not in REALTIME_VOICES:
            raise ValueError(
                f"voice {self.voice!r} is not a realtime voice: one of {', '.join(REALTIME_VOICES)}"
            )
        return self


@dataclass(frozen=True)
class CallBudget:
    """What a call may spend, as its join found it.

    Parameters:
        key_limited: the key has a budget: the call watches what remains of it.
        max_cost_usd: the most the call itself may cost (the key's ``max_call_usd``,
            lowered by ``bot_config.max_cost_usd``); None: no limit of its own.
    """

    key_limited: bool
    max_cost_usd: Decimal | None = None


@dataclass
class CallRequest:
    """One call to run. ``token`` (a Daily meeting token) lives in memory only; a
    ``webrtc`` call's peer was answered by :meth:`CallRunner.answer_webrtc` under the
    same ``workflow_thread_id``; a ``twilio`` call's ``stream`` is the Media Stream the
    API accepted for it; ``budget`` is set when the call has a spending limit."""

    workflow_thread_id: str
    api_key_id: str
    transport: Transport
    bot_config: BotConfig
    room_url: str | None = None
    token: str | None = None
    script: list[str] = field(default_factory=list)
    end_user_id: str | None = None
    process_insights: bool = True
    analysis_prompt: str | None = None
    webhook_url: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    stream: TwilioStream | None = None
    budget: CallBudget | None = None


class AtCapacity(Exception):
    """The runner holds as many calls as it may; retry after ``retry_after_seconds``."""

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__(f"at capacity, retry after {retry_after_seconds}s")
        self.retry_after_seconds = retry_after_seconds


class CallRunner(Protocol):
    """Runs calls in the API process."""

    def has_capacity(self) -> bool: ...

    async def submit(self, call: CallRequest) -> None:
        """Start the call in the background; raises :class:`AtCapacity` when full."""

    async def answer_webrtc(self, workflow_thread_id: str, offer: WebRTCOffer) -> WebRTCAnswer:
        """Answer a caller's offer for the call that will be submitted under this id;
        raises :class:`InvalidWebRTCOffer` or :class:`AtCapacity`. A peer whose call is
        never submitted is closed after ``FLOW_WEBRTC_CONNECT_TIMEOUT_SECONDS``."""

    async def release_webrtc(self, workflow_thread_id: str) -> None:
        """Close the peer answered for a call that will not be submitted (its join was
        refused after the answer), now rather than at the connect timeout."""

    async def add_ice_candidates(
        self, workflow_thread_id: str, candidates: list[IceCandidate]
    ) -> bool:
        """Give a call's peer the caller's trickled candidates; False when this runner
        holds no WebRTC peer for it. Raises :class:`InvalidIceCandidate`."""

    async def stop(self, workflow_thread_id: str) -> bool:
        """End a running call; False when this runner is not running it."""

    @property
    def active_calls(self) -> list[str]:
        """The calls this runner holds (their post-call steps included)."""

    def stop_taking_calls(self) -> None:
        """Refuse every new call from now on (the instance drains)."""

    async def hang_up(self, goodbye: str) -> None:
        """Say ``goodbye`` on every live call, then end it (end reason ``shutdown``)."""

    async def shutdown(self) -> None:
        """End every call at once, flush every meter, mark unfinished threads."""


@dataclass
class CallResult:
    """What a finished call hands the post-call step.

    Parameters:
        transcript: the turns (``role``, ``content``, ``started_at``, ``ended_at``,
            ``interrupted``).
        started_at: when the pipeline started.
        ended_at: when it ended.
        end_reason: why it ended (:class:`flow.db.call_state.EndReason`).
        usage_events: every usage event the call recorded.
    """

    transcript: list[dict[str, Any]]
    started_at: datetime
    ended_at: datetime
    end_reason: EndReason
    usage_events: list[UsageEvent] = field(default_factory=list)


PostCall = Callable[[CallRequest, CallResult], Awaitable[None]]
# Told when a call ends in ``failed`` before its post-call step (error, cancellation,
# shutdown), so its trace and ``call.failed`` webhook still go out.
OnFailed = Callable[[CallRequest, CallResult], Awaitable[None]]


def configuration_problem(settings: Settings) -> str | None:
    """Why this instance cannot run bots with its settings, or None when it can."""
    if not settings.openai_api_key.get_secret_value():
        return "OPENAI_API_KEY is not set"
    if (
        settings.flow_tts_provider == "deepgram"
        and not settings.deepgram_api_key.get_secret_value()
    ):
        return "FLOW_TTS_PROVIDER=deepgram needs DEEPGRAM_API_KEY"
    return None
