"""The ``simulated`` transport: a scripted caller, for demos, tests and benchmarks.

The caller says the join request's ``script`` one line at a time, each after the
bot's previous reply has finished, then hangs up (the call ends). Lines enter the
pipeline as transcriptions, bracketed by proposed user-turn frames, so the user
aggregator runs its ordinary turn logic (including interrupting the bot); the LLM and
TTS run for real, and only the bot's audio is discarded.

Options a test or benchmark may set:

- ``caller_audio_seconds``: audio sent before each line, so an STT service in the
  pipeline has audio to meter (0: none, the STT is bypassed); silence, or a tone of
  ``caller_tone_hz``, followed by ``caller_pause_seconds`` of silence; all at once, or
  in 20 ms frames at the pace of speech (``caller_paced``).
- ``reply_patience_seconds``: how long the caller waits for a reply before talking
  over the bot (None: waits until the idle timeout ends the call).

With a speech-to-speech model (``speaks_text`` False, set for realtime calls) a line is
its audio alone: the model's server hears it, decides when the turn ends and
transcribes it; the script's words are for the server (a test's fake) to know.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
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
FRAME_SECONDS = 0.02  # a paced caller's audio frame


@dataclass
class SimulatedParams:
    """How the scripted caller behaves.

    Parameters:
        caller_audio_seconds: audio sent before each line (for STT metering).
        caller_tone_hz: that audio is a tone of this pitch (0: silence).
        caller_pause_seconds: silence sent after that audio.
        caller_paced: send the audio in 20 ms frames in real time, as a caller speaks
            (else all at once).
        reply_patience_seconds: wait this long for a reply, then talk over the bot.
        expect_greeting: wait for the bot's greeting before the first line.
        sample_rate: the caller's audio sample rate in Hz.
        speaks_text: each line also enters as its transcription (False: audio only).
    """

    caller_audio_seconds: float = 0.0
    caller_tone_hz: float = 0.0
    caller_pause_seconds: float = 0.0
    caller_paced: bool = False
    reply_patience_seconds: float | None = None
    expect_greeting: bool = False
    sample_rate: int = 16000
    speaks_text: bool = True

    def audio(self, seconds: float, tone_hz: float = 0.0) -> bytes:
        """``seconds`` of 16-bit mono PCM: a tone of ``tone_hz``, or silence."""
        samples = round(self.sample_rate * seconds)
        if tone_hz <= 0:
            return bytes(2 * samples)
        step = 2 * math.pi * tone_hz / self.sample_rate
        return struct.pack(
            f"<{samples}h", *(round(8000 * math.sin(step * i)) for i in range(samples))
        )


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
        p = self._params
        audio = p.audio(p.caller_audio_seconds, p.caller_tone_hz) + p.audio(p.caller_pause_seconds)
        step = 2 * round(p.sample_rate * FRAME_SECONDS) if p.caller_paced else len(audio)
        started = time.monotonic()
        for n, start in enumerate(range(0, len(audio), step or 1)):
            if p.caller_paced:
                await asyncio.sleep(max(0.0, started + n * FRAME_SECONDS - time.monotonic()))
            await self.push_frame(InputAudioRawFrame(audio[start : start + step], p.sample_rate, 1))
        self.lines_said += 1
        if not p.speaks_text:
            return
        await self.push_frame(ProposedUserStartedSpeakingFrame())
        await self.push_frame(
            TranscriptionFrame(line, CALLER_ID, time_now_iso8601(), finalized=True)
        )
        await self.push_frame(ProposedUserStoppedSpeakingFrame())


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
            if self._conv.turn == 0:  # a speech-to-speech model's greeting is a reply
                self._conv.greeted.set()
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
