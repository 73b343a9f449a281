"""UsageMetricsProcessor overhead and memory per concurrent call.

1. Throughput: frames/s through a real Pipecat pipeline with the
   ``UsageMetricsProcessor`` (and the ``LLMInferenceTracker``) versus the same pipeline
   with plain pass-through processors in their places. The frame mix is a voice reply's
   (see :func:`frame_mix`): per reply ~200 frames, of which 6 are ``MetricsFrame``s
   (TTFB, 3 TTS character counts, the LLM usage, processing time), each priced and
   taken by a meter (written ahead to its log, then buffered). Rounds run in back-to-back
   pairs, alternating which pipeline goes first; frames/s are medians, and the
   overhead is the median of the per-pair ratios (target: at most 5 %). Time is CPU
   time of this process, so other work on the machine does not land on one side.
2. Memory: peak Python heap (tracemalloc) while 50 simulated calls run at once, each
   a full call pipeline (real OpenAILLMService against a local streaming server, fake
   STT/TTS, metering), divided by 50.

Run: ``.venv/bin/python bench/processor.py`` (no database needed).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loguru import logger
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    TTSAudioRawFrame,
)
from pipecat.metrics.metrics import (
    LLMTokenUsage,
    LLMUsageMetricsData,
    ProcessingMetricsData,
    TTFBMetricsData,
    TTSUsageMetricsData,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from flow.bot.contract import BotConfig, CallRequest
from flow.bot.inference_tracker import LLMInferenceTracker
from flow.bot.pipeline import build_call
from flow.bot.services import CallServices, openai_llm
from flow.bot.simulated import SimulatedParams
from flow.bot.usage_processor import Attribution, UsageMetricsProcessor, UsageRecorder
from flow.config import Settings
from flow.metering.meter import Meter
from flow.metering.pricing import PriceBook
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.voice import FakeSTT, FakeTTS

# The meters' write-ahead logs go to a throwaway folder (their cost is part of what
# the benchmark measures).
SPOOL = Path(tempfile.mkdtemp(prefix="flow-bench-spool-"))


class PassThrough(FrameProcessor):
    def __init__(self, direct: bool = True, **kw: Any) -> None:
        super().__init__(enable_direct_mode=direct, **kw)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)


def frame_mix(n: int) -> list[Frame]:
    """Replies as an OpenAI LLM and a TTS produce them: 3 sentences of 13 text tokens,
    each spoken as 1 s of audio in 20 ms chunks with its TTS character count; TTFB
    first, then the inference's one usage metric and its processing time."""
    frames: list[Frame] = []
    audio = bytes(960)  # 20 ms at 24 kHz, 16-bit mono
    usage = LLMTokenUsage(prompt_tokens=300, completion_tokens=40, total_tokens=340)
    llm = {"processor": "llm", "model": "gpt-4o-mini"}
    while len(frames) < n:
        frames.append(LLMFullResponseStartFrame())
        frames.append(MetricsFrame(data=[TTFBMetricsData(**llm, value=0.2)]))
        for _sentence in range(3):
            frames.extend(LLMTextFrame(f" tok{k}") for k in range(13))
            frames.append(
                MetricsFrame(data=[TTSUsageMetricsData(processor="tts", model="tts-1", value=60)])
            )
            frames.extend(TTSAudioRawFrame(audio, 24000, 1) for _ in range(50))
        frames.append(MetricsFrame(data=[LLMUsageMetricsData(**llm, value=usage)]))
        frames.append(MetricsFrame(data=[ProcessingMetricsData(**llm, value=0.4)]))
        frames.append(LLMFullResponseEndFrame())
    return frames


class Sink(FrameProcessor):
    def __init__(self, **kw: Any) -> None:
        super().__init__(enable_direct_mode=True, **kw)
        self.count = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        self.count += 1
        await self.push_frame(frame, direction)


async def one_round(with_usage: bool, n: int) -> float:
    """Frames per CPU second for one pipeline run of ``n`` frames (CPU time, so other
    processes on the machine do not skew one side)."""
    if with_usage:
        meter = Meter(None, spool_dir=SPOOL)  # type: ignore[arg-type]
        recorder = UsageRecorder(
            Attribution(uuid.uuid4(), uuid.uuid4()),
            meter,
            PriceBook(),
            providers={"llm": "openai", "tts": "openai"},
        )
        middle: FrameProcessor = LLMInferenceTracker(
            recorder, LLMContext(), llm_name="llm", provider="openai", model="gpt-4o-mini"
        )
        last: FrameProcessor = UsageMetricsProcessor(recorder)
    else:
        middle, last = PassThrough(), PassThrough()
    sink = Sink()
    # The tracker sits where it does in a call: first after the frames' producer (the
    # LLM), which pushes text, metrics and the end of a reply in order.
    pipeline = Pipeline([middle, PassThrough(), PassThrough(direct=False), last, sink])
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(enable_metrics=True, send_initial_empty_metrics=False),
        enable_rtvi=False,
        idle_timeout_secs=None,
    )
    started = asyncio.Event()
    t0 = 0.0

    @worker.event_handler("on_pipeline_started")
    async def _started(_w: Any, _f: Any) -> None:
        nonlocal t0
        t0 = time.process_time()
        started.set()

    frames = frame_mix(n)
    await worker.queue_frames(frames)
    await worker.queue_frame(EndFrame())
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()
    elapsed = time.process_time() - t0
    assert sink.count >= len(frames), (sink.count, len(frames))
    if isinstance(middle, LLMInferenceTracker):
        assert middle.estimated == 0, "every inference reported usage: nothing to estimate"
    return len(frames) / elapsed


async def throughput(rounds: int, n: int) -> tuple[float, float, float]:
    """Median frames/s of each pipeline, and the median of the per-pair overheads (each
    pair runs back to back, so slow drift on a shared machine cancels out)."""
    await one_round(True, 2000)  # warm-up: imports, price tables
    await one_round(False, 2000)
    usage, plain, ratios = [], [], []
    for r in range(rounds):
        # Alternate the order too, so neither side always runs second.
        order = (True, False) if r % 2 == 0 else (False, True)
        pair = {}
        for with_usage in order:
            pair[with_usage] = await one_round(with_usage, n)
        usage.append(pair[True])
        plain.append(pair[False])
        ratios.append(pair[False] / pair[True] - 1)
    return statistics.median(usage), statistics.median(plain), statistics.median(ratios)


async def memory_per_call(calls: int) -> tuple[float, float, int]:
    server = await FakeOpenAI(
        replies=["Sure. Here is a short answer for you.", "Done. Anything else?"]
    ).start()
    settings = Settings(openai_api_key="bench", openai_base_url=server.base_url)
    script = ["hello", "do it", "thanks, bye"]
    meters: list[Meter] = []

    async def one_call() -> None:
        request = CallRequest(
            workflow_thread_id=str(uuid.uuid4()),
            api_key_id=str(uuid.uuid4()),
            transport="simulated",
            bot_config=BotConfig(),
            script=script,
        )
        services = CallServices(
            llm=openai_llm(settings, request),
            tts=FakeTTS(),
            stt=FakeSTT(),
            providers={"llm": "openai", "tts": "openai", "stt": "deepgram"},
            models={"llm": settings.flow_llm_model},
            system_instruction=settings.flow_system_prompt,
        )
        meter = Meter(None, spool_dir=SPOOL)  # type: ignore[arg-type]
        meters.append(meter)
        bot = build_call(
            request,
            settings,
            services=services,
            meter=meter,
            price_book=PriceBook(),
            simulated=SimulatedParams(caller_audio_seconds=0.5),
        )
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(bot.worker)
        await runner.run()

    await one_call()  # warm-up outside the measurement
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    t0 = time.perf_counter()
    await asyncio.gather(*(one_call() for _ in range(calls)))
    wall = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    await server.stop()
    events = sum(len(m.events) for m in meters[1:])
    return (peak - base) / calls, wall, events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    logger.remove()
    logging.disable(logging.WARNING)

    usage_fps, plain_fps, overhead = asyncio.run(throughput(args.rounds, args.frames))
    print(f"frames per round: {args.frames}, rounds: {args.rounds} (median, interleaved)")
    print(f"  pass-through processors : {plain_fps:12,.0f} frames/s")
    print(f"  UsageMetricsProcessor   : {usage_fps:12,.0f} frames/s")
    print(f"  overhead (median of pairs): {overhead:+.1%} (target <= +5%)")

    per_call, wall, events = asyncio.run(memory_per_call(args.calls))
    print(f"{args.calls} concurrent simulated calls (3 turns each) in {wall:.1f} s")
    print(f"  peak Python heap per call: {per_call / 1024:,.0f} KiB (tracemalloc)")
    print(f"  usage events metered     : {events}")


if __name__ == "__main__":
    main()
