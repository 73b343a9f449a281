"""Speech-to-speech usage as Pipecat reports it (``LLMTokenUsage`` with audio counts)
becomes one ledger event with its audio parts, priced per modality."""

from __future__ import annotations

import uuid
from pathlib import Path

from pipecat.metrics.metrics import LLMTokenUsage, LLMUsageMetricsData

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
