"""The usage event: one metered unit of work (an LLM inference, a TTS request, an STT
increment, a phone call leg), the row of the ledger.

An event gets its id the moment it is created and keeps it through every retry, spool
replay and export: the id is the idempotency key everywhere (the ledger's primary key,
PostHog's ``uuid``, Mixpanel's ``$insert_id``). Counts follow the OpenAI/OpenTelemetry
convention: ``input_tokens`` counts every prompt token, cached ones included, and
``cache_read_tokens`` is the cached part of it.

Modalities are parts of those totals, never additions to them: ``input_audio_tokens``
is the audio part of ``input_tokens``, ``output_audio_tokens`` the audio part of
``output_tokens``, and ``cache_read_audio_tokens`` the cached audio, which lies in both
``cache_read_tokens`` and ``input_audio_tokens``. Text is the total minus the audio.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any, TypedDict

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

log = logging.getLogger(__name__)

COST_QUANTUM = Decimal("0.0000000001")  # numeric(20, 10) in the ledger
SECONDS_QUANTUM = Decimal("0.001")  # numeric(14, 3)


class UsageKind(StrEnum):
    LLM = "llm"
    TTS = "tts"
    STT = "stt"
    TELEPHONY = "telephony"


class UsageCategory(StrEnum):
    BOT = "bot"
    INSIGHTS = "insights"


def utcnow() -> datetime:
    return datetime.now(UTC)


def quantize_cost(value: Decimal) -> Decimal:
    """Round a cost to the ledger's precision, so Python and SQL sums agree exactly."""
    return value.quantize(COST_QUANTUM, rounding=ROUND_HALF_UP)


def event_id_from(namespace: str, key: str) -> uuid.UUID:
    """A deterministic event id (for usage whose source has its own id, like an
    OpenAI response id): retrying the same work yields the same id."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"flow:{namespace}:{key}")


class AudioParts(TypedDict):
    input_audio_tokens: int
    output_audio_tokens: int
    cache_read_audio_tokens: int


def audio_parts(
    *,
    input_tokens: int,
    output_tokens: int,
    cache_read_tokens: int,
    input_audio_tokens: int,
    output_audio_tokens: int,
    cache_read_audio_tokens: int,
) -> AudioParts:
    """The audio counts a vendor reported, bounded by the totals they are parts of, as
    :class:`UsageEvent` fields: a report that contradicts itself still records its usage
    (with the audio it can hold) instead of being refused and lost."""
    input_audio = max(0, min(input_audio_tokens, input_tokens))
    cached_audio = max(0, min(cache_read_audio_tokens, cache_read_tokens, input_audio))
    # Cached text and uncached audio must fit in the input side by side.
    input_audio = min(input_audio, input_tokens - cache_read_tokens + cached_audio)
    parts: AudioParts = {
        "input_audio_tokens": input_audio,
        "output_audio_tokens": max(0, min(output_audio_tokens, output_tokens)),
        "cache_read_audio_tokens": cached_audio,
    }
    reported = (input_audio_tokens, output_audio_tokens, cache_read_audio_tokens)
    if tuple(parts.values()) != reported:
        log.warning("audio counts %s exceed their totals: recorded as %s", reported, parts)
    return parts


class UsageEvent(BaseModel):
    """One row of the usage ledger.

    Parameters:
        id: idempotency key, fixed at creation.
        kind: ``llm``, ``tts``, ``stt`` or ``telephony`` (a phone call leg).
        category: ``bot`` (during the call) or ``insights`` (post-call).
        input_tokens: every prompt token, cached and audio included (gross).
        cache_read_tokens: the cached part of ``input_tokens``.
        input_audio_tokens: the audio part of ``input_tokens`` (cached audio included).
        output_audio_tokens: the audio part of ``output_tokens``.
        cache_read_audio_tokens: the cached audio, part of both ``cache_read_tokens`` and
            ``input_audio_tokens``.
        characters: TTS characters synthesised.
        audio_seconds: STT audio transcribed; a phone call leg's duration.
        input_cost_usd: what the input cost (prompt tokens, TTS characters, STT audio);
            ``None`` when unpriced.
        output_cost_usd: what the output cost (completion tokens); ``None`` when unpriced.
        cost_usd: the total, derived from the split when the split is given; ``None``
            means unpriced (unknown model), never zero. (Events recorded before the split
            existed, and read back from an old spool, carry only the total.)
        price_source: where the price came from, short and stable (``genai-prices 0.2.3
            openai/gpt-4o-mini``, ``voice-table 2026-11-28 deepgram/nova-3 streaming``,
            ``override``); ``None`` when unpriced (and for events priced before sources
            were recorded).
        estimated: counts estimated by Flow (an interrupted completion reported none).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    workflow_thread_id: uuid.UUID
    api_key_id: uuid.UUID
    end_user_id: str | None = Field(default=None, max_length=255)
    occurred_at: datetime = Field(default_factory=utcnow)
    kind: UsageKind
    category: UsageCategory = UsageCategory.BOT
    provider: str = Field(min_length=1, max_length=100)
    model: str = Field(min_length=1, max_length=200)
    processor: str | None = None
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    cache_read_tokens: int = Field(default=0, ge=0)
    cache_write_tokens: int = Field(default=0, ge=0)
    reasoning_tokens: int = Field(default=0, ge=0)
    input_audio_tokens: int = Field(default=0, ge=0)
    output_audio_tokens: int = Field(default=0, ge=0)
    cache_read_audio_tokens: int = Field(default=0, ge=0)
    characters: int = Field(default=0, ge=0)
    audio_seconds: Decimal = Field(default=Decimal(0), ge=0)
    input_cost_usd: Decimal | None = Field(default=None, ge=0)
    output_cost_usd: Decimal | None = Field(default=None, ge=0)
    cost_usd: Decimal | None = Field(default=None, ge=0)
    price_source: str | None = Field(default=None, min_length=1, max_length=200)
    latency_ms: Decimal | None = Field(default=None, ge=0)
    status_code: int | None = None
    is_error: bool = False
    cache_hit: bool = False
    estimated: bool = False

    @field_validator("audio_seconds", mode="after")
    @classmethod
    def _seconds_to_ledger_precision(cls, v: Decimal) -> Decimal:
        return v.quantize(SECONDS_QUANTUM, rounding=ROUND_HALF_UP)

    @model_validator(mode="before")
    @classmethod
    def _derive_total(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        input_cost, output_cost = data.get("input_cost_usd"), data.get("output_cost_usd")
        if (input_cost is None) != (output_cost is None):
            raise ValueError("input_cost_usd and output_cost_usd are given together or not at all")
        if input_cost is None:
            return data
        total = quantize_cost(Decimal(str(input_cost))) + quantize_cost(Decimal(str(output_cost)))
        given = data.get("cost_usd")
        if given is not None and quantize_cost(Decimal(str(given))) != total:
            raise ValueError(f"cost_usd {given} is not input_cost_usd + output_cost_usd ({total})")
        return {**data, "cost_usd": total}

    @field_validator("cost_usd", "input_cost_usd", "output_cost_usd", mode="after")
    @classmethod
    def _cost_to_ledger_precision(cls, v: Decimal | None) -> Decimal | None:
        return None if v is None else quantize_cost(v)

    @field_validator("latency_ms", mode="after")
    @classmethod
    def _latency_to_ledger_precision(cls, v: Decimal | None) -> Decimal | None:
        return None if v is None else v.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)

    @model_validator(mode="after")
    def _check(self) -> UsageEvent:
        if self.price_source is not None and self.cost_usd is None:
            raise ValueError("price_source names the source of a price: an unpriced event has none")
        if self.cache_read_tokens > self.input_tokens:
            raise ValueError("cache_read_tokens cannot exceed input_tokens (gross convention)")
        for part, whole in (
            ("input_audio_tokens", "input_tokens"),
            ("output_audio_tokens", "output_tokens"),
            ("cache_read_audio_tokens", "cache_read_tokens"),
            ("cache_read_audio_tokens", "input_audio_tokens"),
        ):
            if getattr(self, part) > getattr(self, whole):
                raise ValueError(
                    f"{part} ({getattr(self, part)}) cannot exceed {whole} "
                    f"({getattr(self, whole)}): it is a part of it"
                )
        uncached_text = (
            self.input_tokens
            - self.cache_read_tokens
            - self.input_audio_tokens
            + self.cache_read_audio_tokens
        )
        if uncached_text < 0:
            raise ValueError(
                "cache_read_tokens + input_audio_tokens - cache_read_audio_tokens "
                f"({self.input_tokens - uncached_text}) cannot exceed input_tokens "
                f"({self.input_tokens}): cached and audio input overlap only in "
                "cache_read_audio_tokens"
            )
        return self

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def to_row(self) -> dict[str, Any]:
        """The JSON object ``record_usage_events`` takes (Decimals as exact strings)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> UsageEvent:
        fields = {k: v for k, v in row.items() if k in cls.model_fields}
        return cls.model_validate(fields)
