"""Fake STT and TTS services for tests: real Pipecat services that emit known usage.

``FakeSTT`` meters the audio it receives (Pipecat's own accounting: bytes / (rate * 2))
and reports it once per final transcript passing through, as streaming STT services
do. ``FakeTTS`` "synthesises" a few milliseconds of silence per sentence and reports
the characters of each ``run_tts`` call, as every TTS service does. Each keeps what it
reported so a test can compare with the ledger.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from pipecat.frames.frames import Frame, TranscriptionFrame, TTSAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.settings import STTSettings, TTSSettings
from pipecat.services.stt_service import STTService
from pipecat.services.tts_service import TTSService


class FakeSTT(STTService):
    def __init__(self, *, model: str = "nova-3-general", **kwargs: Any) -> None:
        super().__init__(
            name=kwargs.pop("name", "stt"),
            settings=STTSettings(model=model, language=None),
            **kwargs,
        )
        self.reported_seconds: list[float] = []

    def can_generate_metrics(self) -> bool:
        return True

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        yield None  # the transcript arrives separately (the script)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, TranscriptionFrame):
            pending = self._stt_usage_pending_seconds
            await self.emit_stt_usage_metrics()
            if pending:
                self.reported_seconds.append(pending)
        await super().process_frame(frame, direction)


class FakeTTS(TTSService):
    def __init__(self, *, model: str = "tts-1", **kwargs: Any) -> None:
        super().__init__(
            name=kwargs.pop("name", "tts"),
            push_start_frame=True,
            push_stop_frames=True,
            sample_rate=24000,
            settings=TTSSettings(model=model, voice=None, language=None),
            **kwargs,
        )
        self.reported_characters: list[int] = []

    def can_generate_metrics(self) -> bool:
        return True

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        await self.start_tts_usage_metrics(text)
        self.reported_characters.append(len(text))
        await self.stop_ttfb_metrics()
        # 10 ms of silence at 24 kHz, 16-bit mono.
        yield TTSAudioRawFrame(bytes(480), self.sample_rate, 1, context_id=context_id)
