"""The call's transcript, collected from the context aggregators' turn events.

``on_user_turn_stopped`` (user aggregator) and ``on_assistant_turn_stopped``
(assistant aggregator, which says whether the bot was interrupted) each add one turn.
With a speech-to-speech model (realtime) the caller's words are the model's own
transcription of each turn: the service's ``on_user_transcript`` brings them, one turn
per transcribed item (the user aggregator writes them to the context only when a
response starts, and merges a turn that interrupted a response with the next one).
Each new turn calls ``on_turn`` (the runner saves the transcript so far on the thread,
so ``GET /api/bot/{id}`` and the ``/talk`` page show it while the call runs); the
runner saves the whole list again at call end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pipecat.processors.aggregators.llm_response_universal import (
    AssistantTurnStoppedMessage,
    LLMAssistantAggregator,
    LLMUserAggregator,
    UserTurnStoppedMessage,
)
from pipecat.processors.frame_processor import FrameProcessor


@dataclass(frozen=True)
class Turn:
    """One turn of the conversation.

    Parameters:
        role: ``user`` or ``assistant``.
        content: what was said (for the bot: what it got to say before a cut).
        started_at: ISO 8601, when the turn started.
        ended_at: ISO 8601, when the turn ended.
        interrupted: the caller cut the bot off.
    """

    role: Literal["user", "assistant"]
    content: str
    started_at: str
    ended_at: str
    interrupted: bool = False


class Transcript:
    """Collects turns in order."""

    def __init__(self) -> None:
        self.turns: list[Turn] = []
        self.on_turn: Callable[[], None] | None = None

    def attach(self, user: LLMUserAggregator, assistant: LLMAssistantAggregator) -> None:
        @user.event_handler("on_user_turn_stopped")
        async def _user_turn(_agg: Any, _strategy: Any, message: UserTurnStoppedMessage) -> None:
            if message.content:
                self.add("user", message.content, message.timestamp)

        self._attach_assistant(assistant)

    def attach_realtime(self, llm: FrameProcessor, assistant: LLMAssistantAggregator) -> None:
        """A speech-to-speech call: the caller's turns from the model's transcription
        (:class:`flow.bot.realtime.RealtimeLLMService`'s ``on_user_transcript``)."""

        @llm.event_handler("on_user_transcript")
        async def _user_words(_llm: Any, text: str, started_at: str) -> None:
            if text.strip():
                self.add("user", text.strip(), started_at)

        self._attach_assistant(assistant)

    def _attach_assistant(self, assistant: LLMAssistantAggregator) -> None:

        @assistant.event_handler("on_assistant_turn_stopped")
        async def _assistant_turn(_agg: Any, message: AssistantTurnStoppedMessage) -> None:
            # An interrupted turn that said nothing is still part of the story.
            if message.content or message.interrupted:
                self.add("assistant", message.content, message.timestamp, message.interrupted)

    def add(
        self,
        role: Literal["user", "assistant"],
        content: str,
        started_at: str,
        interrupted: bool = False,
    ) -> None:
        self.turns.append(
            Turn(
                role=role,
                content=content,
                started_at=started_at,
                ended_at=datetime.now(UTC).isoformat(),
                interrupted=interrupted,
            )
        )
        if self.on_turn is not None:
            self.on_turn()

    def to_json(self) -> list[dict[str, Any]]:
        return [asdict(t) for t in self.turns]
