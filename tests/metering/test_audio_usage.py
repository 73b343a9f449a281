"""Speech-to-speech usage as Pipecat reports it (``LLMTokenUsage`` with audio counts)
becomes one ledger event with its audio parts, priced per modality; usage the vendor
names (a response, a transcribed item) keeps one id; a transcription is recorded by its
tokens or its seconds, as it was billed."""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pipecat.metrics.metrics import LLMTokenUsage, LLMUsageMetricsData, STTUsageMetricsData

from flow.bot.reported_usage import SourcedTokenUsage, TranscriptionUsage
from flow.bot.usage_processor import Attribution, UsageRecorder
from flow.metering.meter import Meter
from flow.metering.pricing import PriceBook


def recorder(tmp_path: Path) -> tuple[UsageRecorder, Meter]:
    meter = Meter(None, spool_dir=tmp_path)  # type: ignore[arg-type]  # never flushed
    who = Attribution(workflow_thread_id=uuid.uuid4(), api_key_id=uuid.uuid4())
    return UsageRecorder(who, meter, PriceBook(), providers={"llm": "openai"}), meter


def realtime_usage(**overrides: int) -> LLMUsageMetricsData:
    # What OpenAIRealtimeLLMService reports on response.done: prompt_tokens is the
    # gross input, the audio and cached-audio counts come from the token details.
    fields = {
        "prompt_tokens": 12_480,
        "completion_tokens": 1_905,
        "total_tokens": 14_385,
        "cache_read_input_tokens": 8_064,
        "input_audio_tokens": 9_216,
        "output_audio_tokens": 1_536,
        "cache_read_input_audio_tokens": 6_400,
        **overrides,
    }
    return LLMUsageMetricsData(processor="llm", model="gpt-realtime", value=LLMTokenUsage(**fields))


def test_the_recorder_keeps_the_audio_parts_and_prices_them(tmp_path: Path) -> None:
    rec, meter = recorder(tmp_path)
    rec.on_metrics([realtime_usage()])
    rec.finish()
    [event] = meter.events
    assert (event.input_tokens, event.cache_read_tokens, event.output_tokens) == (
        12_480,
        8_064,
        1_905,
    )
    assert (
        event.input_audio_tokens,
        event.cache_read_audio_tokens,
        event.output_audio_tokens,
    ) == (9_216, 6_400, 1_536)
    price = PriceBook().llm(
        "openai",
        "gpt-realtime",
        input_tokens=12_480,
        cache_read_tokens=8_064,
        output_tokens=1_905,
        input_audio_tokens=9_216,
        cache_read_audio_tokens=6_400,
        output_audio_tokens=1_536,
    )
    assert price is not None
    assert (event.input_cost_usd, event.output_cost_usd) == (
        price.input_cost_usd,
        price.output_cost_usd,
    )


def test_a_text_model_reports_no_audio(tmp_path: Path) -> None:
    rec, meter = recorder(tmp_path)
    usage = LLMTokenUsage(prompt_tokens=500, completion_tokens=40, total_tokens=540)
    rec.on_metrics([LLMUsageMetricsData(processor="llm", model="gpt-4o-mini", value=usage)])
    rec.finish()
    [event] = meter.events
    assert (event.input_audio_tokens, event.output_audio_tokens) == (0, 0)
    assert event.cache_read_audio_tokens == 0


def test_a_report_whose_audio_exceeds_its_totals_is_still_recorded(tmp_path: Path) -> None:
    rec, meter = recorder(tmp_path)
    rec.on_metrics(
        [
            realtime_usage(
                input_audio_tokens=20_000,
                output_audio_tokens=2_000,
                cache_read_input_audio_tokens=9_000,
            )
        ]
    )
    rec.finish()
    [event] = meter.events
    # Bounded by the totals: every input and output token audio, all cache reads audio.
    assert (
        event.input_audio_tokens,
        event.cache_read_audio_tokens,
        event.output_audio_tokens,
    ) == (12_480, 8_064, 1_905)
    assert event.cost_usd is not None


def test_a_named_response_reported_twice_is_one_event(tmp_path: Path) -> None:
    rec, meter = recorder(tmp_path)
    usage = realtime_usage().value
    named = SourcedTokenUsage(**usage.model_dump(), source_id="resp_abc")
    for _ in range(2):
        rec.on_metrics([LLMUsageMetricsData(processor="llm", model="gpt-realtime", value=named)])
    rec.finish()
    first, again = meter.events
    assert first.id == again.id == rec.source_event_id("openai", "llm", "resp_abc")
    assert first.model_dump(exclude={"occurred_at"}) == again.model_dump(exclude={"occurred_at"})


@pytest.mark.parametrize(
    ("usage", "counts", "seconds"),
    [
        (
            {
                "type": "tokens",
                "input_tokens": 52,
                "input_token_details": {"text_tokens": 4, "audio_tokens": 48},
                "output_tokens": 9,
            },
            (52, 48, 9),
            0.8,
        ),
        ({"type": "duration", "seconds": 2.0}, (0, 0, 0), 2.0),
    ],
)
def test_a_transcription_is_recorded_as_it_was_billed(
    tmp_path: Path, usage: dict[str, Any], counts: tuple[int, int, int], seconds: float
) -> None:
    meter = Meter(None, spool_dir=tmp_path)  # type: ignore[arg-type]  # never flushed
    who = Attribution(workflow_thread_id=uuid.uuid4(), api_key_id=uuid.uuid4())
    rec = UsageRecorder(who, meter, PriceBook(), providers={"stt": "openai"})
    reported = TranscriptionUsage.from_openai(usage, audio_seconds=0.8, source_id="item_1")
    model = "whisper-1" if usage["type"] == "duration" else "gpt-4o-mini-transcribe"
    rec.on_metrics([STTUsageMetricsData(processor="stt", model=model, value=reported)])
    [event] = meter.events
    assert (event.kind, event.model) == ("stt", model)
    assert (event.input_tokens, event.input_audio_tokens, event.output_tokens) == counts
    assert event.audio_seconds == Decimal(str(seconds))
    assert event.id == rec.source_event_id("openai", "stt", "item_1")
    assert event.cost_usd is not None and event.cost_usd > 0
