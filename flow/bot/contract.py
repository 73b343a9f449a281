"""What the API hands the bot runner, and what it expects back.

The join route builds a :class:`CallRequest` (the thread row plus the secrets that are
never stored, like a Daily meeting token) and submits it to a :class:`CallRunner`.
Keeping this contract in one small module lets the API be tested against any runner
(tests observe submissions) while the real one lives in ``flow.bot.runner``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from flow.db.call_state import EndReason
from flow.metering.events import UsageEvent

Transport = Literal["daily", "simulated"]


class BotConfig(BaseModel):
    """How the bot behaves on one call; unset fields take the defaults from settings.

    Parameters:
        system_prompt: the LLM's system instruction.
        greeting: what the bot says first (empty: it waits for the caller).
        llm_model: the OpenAI model name.
        voice: the TTS voice.
    """

    model_config = ConfigDict(extra="forbid")

    system_prompt: str | None = Field(default=None, max_length=20_000)
    greeting: str | None = Field(default=None, max_length=2_000)
    llm_model: str | None = Field(default=None, max_length=200)
    voice: str | None = Field(default=None, max_length=100)


@dataclass
class CallRequest:
    """One call to run. ``token`` (a Daily meeting token) lives in memory only."""

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

    async def stop(self, workflow_thread_id: str) -> bool:
        """End a running call; False when this runner is not running it."""

    async def shutdown(self) -> None:
        """End every call cleanly, flush every meter, mark unfinished threads."""


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
