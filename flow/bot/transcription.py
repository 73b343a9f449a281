"""OpenAI's segmented STT, metered the way OpenAI bills it.

Pipecat's ``OpenAISTTService`` reports each segment's seconds as it queues the upload and
never reads the ``usage`` the transcription answers with. OpenAI sells
``gpt-4o-transcribe`` and ``gpt-4o-mini-transcribe`` by the token (audio and text in,
text out) and ``whisper-1`` by the second, and its answer says which
(``{"type": "tokens", ...}`` or ``{"type": "duration", "seconds"}``).

:class:`MeteredOpenAISTTService` holds each segment's seconds until its answer arrives,
then reports one :class:`flow.bot.reported_usage.TranscriptionUsage`: the seconds
uploaded (the vendor's own seconds when it bills by them) and the tokens when the
answer carries them, which price the event. A segment whose answer never comes (the
upload failed, or the call was cancelled with it queued) is still reported, by its
seconds, as Pipecat would have.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from openai.types.audio import Transcription
from pipecat.services.openai.stt import OpenAISTTService

from flow.bot.reported_usage import TranscriptionUsage


class MeteredOpenAISTTService(OpenAISTTService):
    """``OpenAISTTService`` whose usage is the transcription's own (tokens or seconds)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # The seconds of each segment queued for upload, in upload order.
        self._held_seconds: deque[float] = deque()

    async def emit_stt_usage_metrics(self) -> None:
        # Pipecat calls this as it queues a segment (and on stop/cancel): hold the
        # seconds for the segment's answer instead of reporting them now.
        seconds, self._stt_usage_pending_seconds = self._stt_usage_pending_seconds, 0.0
        if seconds > 0:
            self._held_seconds.append(seconds)

    async def _transcribe(self, audio: bytes) -> Transcription:
        seconds = self._held_seconds.popleft() if self._held_seconds else 0.0
        try:
            response = await super()._transcribe(audio)
        except asyncio.CancelledError:
            # Reported with the other unanswered segments when the service stops.
            self._held_seconds.appendleft(seconds)
            raise
        except Exception:
            await self._report(TranscriptionUsage(audio_seconds=seconds))
            raise
        usage = getattr(response, "usage", None)
        await self._report(TranscriptionUsage.from_openai(usage, audio_seconds=seconds))
        return response

    async def _flush_stt_usage_metrics(self) -> None:
        await self.emit_stt_usage_metrics()
        while self._held_seconds:
            await self._report(TranscriptionUsage(audio_seconds=self._held_seconds.popleft()))

    async def _report(self, usage: TranscriptionUsage) -> None:
        if usage.audio_seconds > 0 or usage.has_tokens:
            await self.start_stt_usage_metrics(usage)
