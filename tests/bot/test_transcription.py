"""OpenAI's segmented STT billed the way it is sold: the real service (Pipecat's
``OpenAISTTService`` under Flow's meter) uploads each segment to the local fake, whose
answer carries OpenAI's ``usage``: tokens for the gpt-4o-transcribe family, seconds for
whisper-1. The events are priced from those, by hand here."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InputAudioRawFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.workers.runner import WorkerRunner

from flow.bot.transcription import MeteredOpenAISTTService
from flow.bot.usage_processor import Attribution, UsageMetricsProcessor, UsageRecorder
from flow.metering.events import UsageEvent
from flow.metering.meter import Meter
from flow.metering.pricing import PriceBook
from tests.fakes.openai_server import FakeOpenAI

MTOK = Decimal(1_000_000)
# OpenAI's published rates, USD per 1M tokens: text in, audio in, text out.
TRANSCRIBE = {"text_in": Decimal("2.50"), "audio_in": Decimal("6.00"), "out": Decimal("10.00")}
WHISPER_PER_MINUTE = Decimal("0.006")
SEGMENTS = [1.2, 2.05]  # seconds of speech; the service pads each with 0.5 s of silence


@pytest.fixture
async def openai_server() -> AsyncIterator[FakeOpenAI]:
    server = await FakeOpenAI(transcripts=["Where is my order?", "Thanks."]).start()
    yield server
    await server.stop()


async def transcribe(server: FakeOpenAI, model: str, tmp_path: Path) -> list[UsageEvent]:
    """Speech segments through the real service, as VAD cuts them; the meter's events."""
    meter = Meter(None, spool_dir=tmp_path)  # type: ignore[arg-type]  # never flushed
    who = Attribution(workflow_thread_id=uuid.uuid4(), api_key_id=uuid.uuid4())
    recorder = UsageRecorder(
        who, meter, PriceBook(), providers={"stt": "openai"}, models={"stt": model}
    )
    stt = MeteredOpenAISTTService(
        name="stt",
        api_key="sk-test",
        base_url=server.base_url,
        settings=MeteredOpenAISTTService.Settings(model=model),
    )
    frames: list[Frame] = []
    for seconds in SEGMENTS:
        speech = InputAudioRawFrame(bytes(2 * round(16000 * seconds)), 16000, 1)
        frames += [VADUserStartedSpeakingFrame(), speech, VADUserStoppedSpeakingFrame()]
    worker = PipelineWorker(
        Pipeline([stt, UsageMetricsProcessor(recorder)]),
        params=PipelineParams(enable_metrics=True, enable_usage_metrics=True),
        enable_rtvi=False,
        idle_timeout_secs=None,
    )
    await worker.queue_frames([*frames, EndFrame()])
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()
    return meter.events


async def test_a_model_sold_by_the_token_is_billed_by_its_tokens_and_keeps_its_seconds(
    openai_server: FakeOpenAI, tmp_path: Path
) -> None:
    events = await transcribe(openai_server, "gpt-4o-transcribe", tmp_path)
    uploads = openai_server.uploads
    assert len(events) == len(uploads) == len(SEGMENTS)
    for event, upload in zip(events, uploads, strict=True):
        assert upload.usage is not None and upload.usage["type"] == "tokens"
        audio = upload.usage["input_token_details"]["audio_tokens"]
        text = upload.usage["input_tokens"] - audio
        out = upload.usage["output_tokens"]
        assert (event.kind, event.model, event.provider) == ("stt", "gpt-4o-transcribe", "openai")
        assert (event.input_tokens, event.input_audio_tokens, event.output_tokens) == (
            upload.usage["input_tokens"],
            audio,
            out,
        )
        # The seconds uploaded are recorded too (the ledger keeps milliseconds).
        assert event.audio_seconds == upload.seconds.quantize(Decimal("0.001"))
        assert upload.seconds == Decimal(str(SEGMENTS[uploads.index(upload)])) + Decimal("0.5")
        # Priced by hand from OpenAI's rates: audio and text in, text out.
        by_hand_in = (text * TRANSCRIBE["text_in"] + audio * TRANSCRIBE["audio_in"]) / MTOK
        by_hand_out = out * TRANSCRIBE["out"] / MTOK
        assert event.input_cost_usd == by_hand_in
        assert event.output_cost_usd == by_hand_out
        assert event.cost_usd == by_hand_in + by_hand_out


async def test_whisper_is_billed_by_the_seconds_it_reports(
    openai_server: FakeOpenAI, tmp_path: Path
) -> None:
    events = await transcribe(openai_server, "whisper-1", tmp_path)
    assert len(events) == len(openai_server.uploads) == len(SEGMENTS)
    for event, upload in zip(events, openai_server.uploads, strict=True):
        assert upload.usage == {"type": "duration", "seconds": 2 if upload.seconds < 2 else 3}
        assert (event.input_tokens, event.output_tokens) == (0, 0)
        assert event.audio_seconds == upload.usage["seconds"]
        assert event.cost_usd == upload.usage["seconds"] * WHISPER_PER_MINUTE / 60


async def test_a_failed_transcription_still_records_the_seconds_sent(
    openai_server: FakeOpenAI, tmp_path: Path
) -> None:
    openai_server.transcription_status = 400
    events = await transcribe(openai_server, "gpt-4o-transcribe", tmp_path)
    assert len(events) == len(openai_server.uploads) == len(SEGMENTS)
    for event, upload in zip(events, openai_server.uploads, strict=True):
        assert event.audio_seconds == upload.seconds.quantize(Decimal("0.001"))
        assert (event.input_tokens, event.output_tokens) == (0, 0)
        assert event.cost_usd is not None and event.cost_usd > 0
