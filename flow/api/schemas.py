"""The shapes of the money the API answers with, so ``/docs`` describes them.

Every amount of money (and every measured quantity stored as ``numeric``, like STT
seconds) is a decimal *string* with the ledger's exact digits: a JSON number would go
through a float in most clients and lose them.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Any
from uuid import UUID

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _as_text(value: Any) -> Any:
    # jsonb gives a whole amount back as an int (0, 12): the same decimal, as text.
    return str(value) if isinstance(value, int | Decimal) and not isinstance(value, bool) else value


DecimalText = Annotated[str, BeforeValidator(_as_text)]


class ModelUsage(BaseModel):
    """One model's share of a call.

    Parameters:
        calls: usage events of this model (LLM inferences, TTS requests, STT segments).
        input_audio_tokens / output_audio_tokens / cache_read_audio_tokens: the audio
            parts of its tokens (as in :class:`UsageStats`).
        audio_seconds: STT audio transcribed by it (a phone call leg's duration, for
            ``inbound``/``outbound``).
        cost_usd: what it cost (unpriced events count as zero here).
    """

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    cache_read_audio_tokens: int = 0
    characters: int = 0
    audio_seconds: DecimalText = "0"
    cost_usd: DecimalText = "0"


class UsageStats(BaseModel):
    """A call's usage so far, kept by the ledger in the same transaction as each event.

    Parameters:
        events: ledger rows of the call.
        llm_calls: LLM inferences (the call's and the insights step's).
        input_tokens: prompt tokens, cached included. total_tokens: input + output.
        cache_read_tokens: the cached part of ``input_tokens``.
        input_audio_tokens: the audio part of ``input_tokens`` (cached audio included).
        output_audio_tokens: the audio part of ``output_tokens``.
        cache_read_audio_tokens: the cached audio, part of both ``cache_read_tokens``
            and ``input_audio_tokens``. Text is each total minus its audio.
        tts_characters: characters spoken. stt_seconds: audio transcribed.
        telephony_seconds: the phone call leg's duration (billed per started minute).
        total_cost_usd: what the call cost; ``bot_cost_usd`` during the call,
            ``insights_cost_usd`` after it.
        unpriced_events: events recorded without a price (their model has none).
        estimated_events: events whose counts Flow estimated (a reply cut off before
            the vendor reported its usage).
        models_used: the same figures per model.
        posthog_trace_id: the call's ``$ai_trace_id`` in PostHog.
    """

    model_config = ConfigDict(extra="allow")

    events: int = 0
    llm_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cache_read_tokens: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    cache_read_audio_tokens: int = 0
    tts_characters: int = 0
    stt_seconds: DecimalText = "0"
    telephony_seconds: DecimalText = "0"
    total_cost_usd: DecimalText = "0"
    bot_cost_usd: DecimalText = "0"
    insights_cost_usd: DecimalText = "0"
    unpriced_events: int = 0
    estimated_events: int = 0
    models_used: dict[str, ModelUsage] = Field(default_factory=dict)
    posthog_trace_id: str | None = None

    @classmethod
    def from_row(cls, stats: dict[str, Any]) -> UsageStats:
        """From ``workflow_threads.usage_stats`` as read (numbers exact, as Decimal)."""
        return cls.model_validate(stats)


class DashboardTotals(BaseModel):
    """The period's figures.

    Parameters:
        calls: calls with usage. end_users: distinct named end users.
        tokens: input + output tokens.
        input_audio_tokens / output_audio_tokens / cache_read_audio_tokens: the audio
            parts of the input, the output and the cached input.
        avg_cost_per_call_usd / avg_cost_per_end_user_usd: null without calls / users.
        error_rate: error events / events, null without events.
        llm_latency_p50_ms / llm_latency_p95_ms: over the period's most recent
            ``latency_sample`` LLM inferences (at most 10,000).
    """

    calls: int
    end_users: int
    llm_calls: int
    events: int
    cost_usd: DecimalText
    tokens: int
    input_audio_tokens: int
    output_audio_tokens: int
    cache_read_audio_tokens: int
    tts_characters: int
    stt_seconds: DecimalText
    telephony_seconds: DecimalText = "0"
    unpriced_events: int
    avg_cost_per_call_usd: DecimalText | None
    avg_cost_per_end_user_usd: DecimalText | None
    error_rate: DecimalText | None
    llm_latency_p50_ms: DecimalText | None
    llm_latency_p95_ms: DecimalText | None
    latency_sample: int


class DayModelCost(BaseModel):
    day: date
    model: str
    cost_usd: DecimalText


class DayVolume(BaseModel):
    day: date
    tokens: int
    tts_characters: int
    stt_seconds: DecimalText
    telephony_seconds: DecimalText = "0"


class CostlyCall(BaseModel):
    workflow_thread_id: UUID
    cost_usd: DecimalText
    tokens: int
    status: str
    end_user_id: str | None
    created_at: str


class DashboardSummary(BaseModel):
    """What ``/dashboard`` draws, computed in SQL (``dashboard_summary``).

    Parameters:
        start / end: the period (UTC).
        cost_by_day_model: cost per UTC day and model.
        volume_by_day: tokens, TTS characters, STT seconds and phone call seconds per
            UTC day.
        cost_by_category: cost per category (``bot``, ``insights``).
        cost_by_kind: cost per kind (``llm``, ``tts``, ``stt``, and any kind added later).
        top_calls: the most expensive calls, costliest first.
    """

    start: str
    end: str
    totals: DashboardTotals
    cost_by_day_model: list[DayModelCost]
    volume_by_day: list[DayVolume]
    cost_by_category: dict[str, DecimalText]
    cost_by_kind: dict[str, DecimalText] = Field(default_factory=dict)
    top_calls: list[CostlyCall]
