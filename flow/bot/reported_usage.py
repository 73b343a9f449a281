"""Usage as vendors report it, where Pipecat's metric types say less than the bill.

Pipecat's ``LLMTokenUsage`` and ``STTUsage`` carry counts only. Two things the ledger
needs travel on subclasses of them, through the same ``MetricsFrame`` road to
:class:`flow.bot.usage_processor.UsageMetricsProcessor`:

- the vendor's name for the unit of work (an OpenAI Realtime response id, a transcribed
  conversation item id), from which the event's id derives: a report seen twice is
  still one event;
- the tokens of a transcription sold by the token (OpenAI's ``gpt-4o-transcribe`` and
  ``gpt-4o-mini-transcribe``: audio and text in, text out), beside its seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipecat.metrics.metrics import LLMTokenUsage, STTUsage


class SourcedTokenUsage(LLMTokenUsage):
    """An ``LLMTokenUsage`` that names the vendor's unit of work it counts (an OpenAI
    Realtime response id): its event's id derives from it, so it is never counted twice.
    """

    source_id: str


class TranscriptionUsage(STTUsage):
    """What one transcription used: its seconds of audio and, for a model sold by the
    token, its tokens (``input_tokens`` gross, ``input_audio_tokens`` the audio part).

    Parameters:
        source_id: the vendor's id of what was transcribed (a Realtime conversation
            item), when it has one: the event's id derives from it.
    """

    input_tokens: int = 0
    input_audio_tokens: int = 0
    output_tokens: int = 0
    source_id: str | None = None

    @property
    def has_tokens(self) -> bool:
        return bool(self.input_tokens or self.output_tokens)

    @classmethod
    def from_openai(
        cls, usage: Any, *, audio_seconds: float = 0.0, source_id: str | None = None
    ) -> TranscriptionUsage:
        """From the ``usage`` of an OpenAI transcription (a JSON object, or the SDK's
        model of one): ``{"type": "tokens", "input_tokens", "input_token_details":
        {"audio_tokens"}, "output_tokens"}`` or ``{"type": "duration", "seconds"}`` (the
        vendor's seconds then replace ``audio_seconds``)."""
        if hasattr(usage, "model_dump"):
            usage = usage.model_dump()
        usage = usage if isinstance(usage, Mapping) else {}
        if usage.get("type") == "duration":
            seconds = float(usage.get("seconds") or 0)
            return cls(audio_seconds=seconds or audio_seconds, source_id=source_id)
        details = usage.get("input_token_details") or {}
        return cls(
            audio_seconds=audio_seconds,
            input_tokens=int(usage.get("input_tokens") or 0),
            input_audio_tokens=int(details.get("audio_tokens") or 0),
            output_tokens=int(usage.get("output_tokens") or 0),
            source_id=source_id,
        )
