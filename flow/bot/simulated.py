"""The ``simulated`` transport: a scripted caller, for demos, tests and benchmarks.

The caller says the join request's ``script`` one line at a time, each after the
bot's previous reply has finished, then hangs up (the call ends). Lines enter the
pipeline as transcriptions, bracketed by proposed user-turn frames, so the user
aggregator runs its ordinary turn logic (including interrupting the bot); the LLM and
TTS run for real, and only the bot's audio is discarded.

Options a test or benchmark may set:

- ``caller_audio_seconds``: silence sent before each line, so an STT service in the
  pipeline has audio to meter (0: none, the STT is bypassed).
- ``reply_patience_seconds``: how long the caller waits for a reply before talking
  over the bot (None: waits until the idle timeout ends the call).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    EndWorkerFrame,
    Frame,
    InputAudioRawFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    OutputAudioRawFrame,
    ProposedUserStartedSpeakingFrame,
    ProposedUserStoppedSpeakingFrame,
    StartFrame,
    TranscriptionFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.base_transport import BaseTransport
from pipecat.utils.time import time_now_iso8601

log = logging.getLogger(__name__)

CALLER_ID = "simulated-caller"


@dataclass
class SimulatedParams:
    """How the scripted caller behaves.

    Parameters:
        caller_audio_seconds: silence sent before each line (for STT metering).
        reply_patience_seconds: wait this long for a reply, then talk over the bot.
        expect_greeting: wait for the bot's greeting before the first line.
        sample_rate: the caller's audio sample rate in Hz.
    """

    caller_audio_seconds: float = 0.0
    reply_patience_seconds: float | None = None
    expect_greeting: bool = False
    sample_rate: int = 16000


class _Conversation:
    """State shared by the two ends: which caller turn the bot is answering."""

    def __init__(self) -> None:
        self.turn = 0
        self.reply_turn = -1
        self.reply_done = asyncio.Event()
        self.greeted = asyncio.Event()


class SimulatedInput(FrameProcessor):
    """Says the script, one line after each bot reply, then ends the call."""

    def __init__(
        self, script: list[str], params: SimulatedParams, conversation: _Conversation, **kw: Any
    ) -> None:
        super().__init__(**kw)
        self._script = list(script)
        self._params = params
        self._conv = conversation
        self._task: asyncio.Task[None] | None = None
        self.lines_said = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame) and self._task is None:
            self._task = self.create_task(self._say_script(), "simulated-caller")
        elif isinstance(frame, (EndFrame, CancelFrame)) and self._task is not None:
            task, self._task = self._task, None
            if task is not asyncio.current_task():
                await self.cancel_task(task)

    async def _wait(self, event: asyncio.Event) -> None:
        try:
            await asyncio.wait_for(event.wait(), timeout=self._params.reply_patience_seconds)
        except TimeoutError:
            log.info("simulated caller talks over the bot")

    async def _say_script(self) -> None:
        if self._params.expect_greeting:
            await self._wait(self._conv.greeted)
        for line in self._script:
            await self._say(line)
            await self._wait(self._conv.reply_done)
        # Hang up: the worker turns this into an EndFrame, which drains the pipeline.
        await self.push_frame(EndWorkerFrame(), FrameDirection.UPSTREAM)

    async def _say(self, line: str) -> None:
        self._conv.turn += 1
        self._conv.reply_done.clear()
        seconds = self._params.caller_audio_seconds
        if seconds > 0:
            samples = round(self._params.sample_rate * seconds)
            await self.push_frame(
                InputAudioRawFrame(bytes(2 * samples), self._params.sample_rate, 1)
            )
        await self.push_frame(ProposedUserStartedSpeakingFrame())
        await self.push_frame(
            TranscriptionFrame(line, CALLER_ID, time_now_iso8601(), finalized=True)
        )
        await self.push_frame(ProposedUserStoppedSpeakingFrame())
        self.lines_said += 1


class SimulatedOutput(FrameProcessor):
    """Discards the bot's audio and tells the caller when a reply has finished."""

    def __init__(self, conversation: _Conversation, **kw: Any) -> None:
        super().__init__(**kw)
        self._conv = conversation
        self._in_reply = False
        self.audio_bytes_discarded = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, OutputAudioRawFrame):
            self.audio_bytes_discarded += len(frame.audio)
            return
        if isinstance(frame, LLMFullResponseStartFrame):
            self._in_reply = True
            self._conv.reply_turn = self._conv.turn
        elif isinstance(frame, LLMFullResponseEndFrame):
            self._in_reply = False
            # The end of a reply the caller already talked over answers nothing.
            if self._conv.reply_turn == self._conv.turn:
                self._conv.reply_done.set()
        elif isinstance(frame, TTSStoppedFrame) and not self._in_reply:
            self._conv.greeted.set()
        await self.push_frame(frame, direction)


class SimulatedTransport(BaseTransport):
    """A transport whose far end is a scripted caller."""

    def __init__(self, script: list[str], params: SimulatedParams | None = None) -> None:
        super().__init__(name="simulated")
        conversation = _Conversation()
        self.params = params or SimulatedParams()
        self._input = SimulatedInput(script, self.params, conversation, name="transport.in")
        self._output = SimulatedOutput(conversation, name="transport.out")

    def input(self) -> SimulatedInput:
        return self._input

    def output(self) -> SimulatedOutput:
        return self._output
