"""Each ``MetricsFrame`` counts once, however often it reaches the usage processor."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from pipecat.frames.frames import MetricsFrame
from pipecat.metrics.metrics import TTSUsageMetricsData
from pipecat.tests.utils import run_test

from flow.bot import usage_processor
from flow.bot.usage_processor import Attribution, UsageMetricsProcessor, UsageRecorder
from flow.metering.meter import Meter
from flow.metering.pricing import PriceBook


def processor(tmp_path: Path) -> tuple[UsageMetricsProcessor, Meter]:
    meter = Meter(None, spool_dir=tmp_path)  # type: ignore[arg-type]  # never flushed
    who = Attribution(workflow_thread_id=uuid.uuid4(), api_key_id=uuid.uuid4())
    recorder = UsageRecorder(who, meter, PriceBook(), providers={"tts": "openai"})
    return UsageMetricsProcessor(recorder), meter


def spoken(characters: int) -> MetricsFrame:
    return MetricsFrame(
        data=[TTSUsageMetricsData(processor="tts", model="tts-1", value=characters)]
    )


async def test_a_metrics_frame_that_arrives_twice_is_counted_once(tmp_path: Path) -> None:
    usage, meter = processor(tmp_path)
    first, second = spoken(42), spoken(7)
    await run_test(
        usage,
        frames_to_send=[first, first, second, first],
        expected_down_frames=[MetricsFrame] * 4,  # every frame is still passed on
    )
    assert [e.characters for e in meter.events] == [42, 7]


async def test_the_ids_remembered_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(usage_processor, "RECENT_FRAME_IDS", 2)
    usage, meter = processor(tmp_path)
    frames = [spoken(n) for n in (1, 2, 3)]
    # The third frame pushes the first out of memory: a repeat that far behind is new.
    await run_test(usage, frames_to_send=[*frames, frames[2], frames[0]])
    assert [e.characters for e in meter.events] == [1, 2, 3, 1]
