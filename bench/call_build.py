"""How long building a call holds the event loop, against the same call built with
Pipecat's parts as they load themselves.

While one call's bot speaks, the event loop must never pause 10 ms or more: Pipecat's
WebRTC output sends silence when the next piece of speech is that late, and the caller
hears a gap. Every call that starts pauses the loop while it is built (services,
transport, pipeline), so the pause a build makes is heard in every call already talking.

The run answers ``--calls`` WebRTC offers of in-process aiortc callers (loopback, not
measured), then builds a call over each peer, the way the bot runner does
(:func:`~flow.bot.services.default_services`, the WebRTC transport,
:func:`~flow.bot.pipeline.build_call`), one build every 50 ms, two ways in alternating
rounds:

- ``flow``: as Flow builds it: the OpenAI clients over the process's SSL context, the
  process's Silero VAD and smart-turn ONNX sessions (:mod:`flow.bot.shared`);
- ``stock``: the same services, analyzers and pipeline built by Pipecat's constructors
  as they come: each OpenAI service loads the system's CA certificates for its HTTP
  client, each call loads the Silero VAD and smart-turn models.

A probe task asks the loop to wake it every 2 ms; how late it wakes during a build is
the stall that build made. Printed: per way, the median and the largest stall of a
build, and the ratio flow / stock. Before the rounds, :func:`~flow.bot.shared.warm_up`
runs (as the API's lifespan does) and the largest stall it made is printed: it runs in
a thread. Last, with Flow's calls still built, a full garbage collection is timed with
what warm-up loaded frozen (``gc.freeze``, as Flow runs) and unfrozen. No database, no
vendor: nothing is run, only built.

Run: ``.venv/bin/python bench/call_build.py`` (``--calls 8 --rounds 3``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loguru import logger
from pydantic import SecretStr

from flow.bot.contract import BotConfig, CallRequest, WebRTCOffer
from flow.config import Settings

PROBE_SECONDS = 0.002
GAP_SECONDS = 0.05


class LoopProbe:
    """Wakes every 2 ms and keeps the largest lateness since the last :meth:`take`."""

    def __init__(self) -> None:
        self.worst = 0.0

    async def run(self) -> None:
        while True:
            asked = time.perf_counter() + PROBE_SECONDS
            await asyncio.sleep(PROBE_SECONDS)
            self.worst = max(self.worst, time.perf_counter() - asked)

    def take(self) -> float:
        worst, self.worst = self.worst, 0.0
        return worst


def bench_settings() -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        openai_api_key=SecretStr("sk-bench"),
        openai_base_url="http://127.0.0.1:9/v1",
        flow_webrtc_loopback=True,
        flow_log_level="ERROR",
    )


def stock_services(settings: Settings, call: CallRequest) -> Any:
    """:func:`~flow.bot.services.default_services`'s OpenAI services, each building its
    own HTTP client (Pipecat's and the SDK's defaults)."""
    from pipecat.services.openai.llm import OpenAILLMService
    from pipecat.services.openai.tts import OpenAITTSService

    from flow.bot.services import CallServices, llm_model_for, system_prompt_for
    from flow.bot.transcription import MeteredOpenAISTTService

    key = settings.openai_api_key.get_secret_value()
    url = settings.openai_base_url
    return CallServices(
        llm=OpenAILLMService(
            name="llm",
            api_key=key,
            base_url=url,
            settings=OpenAILLMService.Settings(
                model=llm_model_for(settings, call),
                system_instruction=system_prompt_for(settings, call),
            ),
        ),
        tts=OpenAITTSService(
            name="tts",
            api_key=key,
            base_url=url,
            settings=OpenAITTSService.Settings(model=settings.flow_tts_model, voice="alloy"),
        ),
        stt=MeteredOpenAISTTService(
            name="stt",
            api_key=key,
            base_url=url,
            settings=MeteredOpenAISTTService.Settings(model="gpt-4o-transcribe"),
        ),
        providers={"llm": "openai", "tts": "openai", "stt": "openai"},
        models={"llm": llm_model_for(settings, call)},
        system_instruction=system_prompt_for(settings, call),
    )


def stock_audio_turns(settings: Settings) -> Any:
    """Silero VAD and Pipecat's default turn stop (the smart-turn model), each loading
    its model."""
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.audio.vad.vad_analyzer import VADParams
    from pipecat.processors.aggregators.llm_response_universal import LLMUserAggregatorParams

    vad = SileroVADAnalyzer(params=VADParams(stop_secs=settings.flow_vad_stop_secs))
    return LLMUserAggregatorParams(vad_analyzer=vad)


@contextmanager
def stock_turns() -> Iterator[None]:
    with mock.patch("flow.bot.pipeline.audio_turns", stock_audio_turns):
        yield


def new_call() -> CallRequest:
    return CallRequest(
        workflow_thread_id=str(uuid.uuid4()),
        api_key_id=str(uuid.uuid4()),
        transport="webrtc",
        bot_config=BotConfig(greeting=""),
    )


async def answered_peers(settings: Settings, n: int) -> tuple[list[Any], list[Any]]:
    from flow.bot.webrtc import answer_offer
    from flow.demo.caller import Caller

    callers = [Caller() for _ in range(n)]
    peers = []
    for caller in callers:
        offer = await caller.offer()
        peers.append(await answer_offer(WebRTCOffer(**offer), settings))
    return callers, peers


async def build_round(
    settings: Settings,
    probe: LoopProbe,
    n: int,
    factory: Callable[[Settings, CallRequest], Any],
    keep: list[Any] | None = None,
) -> list[float]:
    """Build n calls, one every 50 ms (kept in ``keep``); the stall each build made."""
    from flow.bot.pipeline import build_call
    from flow.bot.webrtc import webrtc_transport
    from flow.metering.pricing import PriceBook

    prices = PriceBook()
    callers, peers = await answered_peers(settings, n)
    stalls = []
    try:
        for peer in peers:
            await asyncio.sleep(GAP_SECONDS)
            probe.take()
            call = new_call()
            bot = build_call(
                call,
                settings,
                services=factory(settings, call),
                meter=None,
                price_book=prices,
                transport=webrtc_transport(peer),
            )
            if keep is not None:
                keep.append(bot)
            await asyncio.sleep(PROBE_SECONDS * 3)  # the probe wakes and measures
            stalls.append(probe.take())
    finally:
        for peer in peers:
            await peer.close()
        for caller in callers:
            await caller.pc.close()
    return stalls


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def full_collections(repeat: int = 3) -> dict[str, float]:
    """The median time of a full garbage collection with what warm-up loaded frozen
    (as Flow runs), then unfrozen (walked by every full collection)."""
    times: dict[str, list[float]] = {"frozen": [], "unfrozen": []}
    for way in times:
        if way == "unfrozen":
            gc.unfreeze()
        for _ in range(repeat):
            started = time.perf_counter()
            gc.collect()
            times[way].append(time.perf_counter() - started)
    return {way: statistics.median(t) for way, t in times.items()}


async def main_async(args: argparse.Namespace) -> None:
    from flow.bot.services import default_services
    from flow.bot.shared import warm_up

    settings = bench_settings()
    probe = LoopProbe()
    probe_task = asyncio.ensure_future(probe.run())
    await asyncio.sleep(0.05)
    probe.take()
    started = time.perf_counter()
    await warm_up(settings)
    print(
        f"warm-up (in a thread): {ms(time.perf_counter() - started)} wall, "
        f"the loop's largest stall meanwhile {ms(probe.take())}"
    )
    ways: dict[str, list[float]] = {"flow": [], "stock": []}
    # One untimed build each way first: the modules each way imports are then loaded.
    await build_round(settings, probe, 1, default_services)
    with stock_turns():
        await build_round(settings, probe, 1, stock_services)
    built: list[Any] = []
    for r in range(args.rounds):
        for way in ("flow", "stock") if r % 2 == 0 else ("stock", "flow"):
            if way == "flow":
                ways[way] += await build_round(settings, probe, args.calls, default_services, built)
            else:
                with stock_turns():
                    ways[way] += await build_round(settings, probe, args.calls, stock_services)
    probe_task.cancel()

    print(f"\nstall of the event loop while one call is built ({len(ways['flow'])} builds each)")
    print(f"{'':8}{'median':>11}{'largest':>11}")
    for way, stalls in ways.items():
        print(f"{way:8}{ms(statistics.median(stalls)):>11}{ms(max(stalls)):>11}")
    ratio = statistics.median(ways["flow"]) / statistics.median(ways["stock"])
    print(f"\nratio flow / stock (medians): {ratio:.2f}")
    print("(a stall of 10 ms or more is heard as a gap in the speech of every call talking)")
    collections = full_collections()
    print(
        f"\na full garbage collection, {len(built)} calls built: {ms(collections['frozen'])} "
        f"with what warm-up loaded frozen, {ms(collections['unfrozen'])} without "
        f"(ratio {collections['frozen'] / collections['unfrozen']:.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=8, help="calls built per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logger.remove()
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
