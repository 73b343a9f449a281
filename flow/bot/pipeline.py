"""Builds one call's Pipecat pipeline, its services and its metering.

::

    transport.in -> [stt] -> user aggregator -> llm -> LLMInferenceTracker -> tts
        -> transport.out -> assistant aggregator -> UsageMetricsProcessor

Services get stable names (``stt``, ``llm``, ``tts``): a metric's ``processor`` is the
service's name, which is how usage is attributed to a vendor. Usage metrics are on
(``enable_usage_metrics``), the zero-valued start-up metrics are off.

Services come from settings (:func:`default_services`) unless a factory is given
(tests pass fake STT/TTS and point the real OpenAI LLM at a local server). Transports:
``daily`` (a Daily room, Silero VAD on the caller's audio) and ``simulated``
(:mod:`flow.bot.simulated`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from pipecat.frames.frames import EndFrame, TTSSpeakFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.services.llm_service import LLMService
from pipecat.services.stt_service import STTService
from pipecat.services.tts_service import TTSService
from pipecat.transports.base_transport import BaseTransport
from pipecat.turns.user_stop import ExternalUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import ExternalUserTurnStrategies

from flow.bot.contract import CallRequest
from flow.bot.simulated import SimulatedParams, SimulatedTransport
from flow.bot.transcript import Transcript
from flow.bot.usage_processor import (
    Attribution,
    LLMInferenceTracker,
    UsageMetricsProcessor,
    UsageRecorder,
)
from flow.config import Settings
from flow.metering.meter import Meter
from flow.metering.pricing import PriceBook

STT_NAME, LLM_NAME, TTS_NAME = "stt", "llm", "tts"


@dataclass
class CallServices:
    """The services of one call and the vendor and model behind each.

    Parameters:
        llm: the LLM service (named ``llm``).
        tts: the TTS service (named ``tts``).
        stt: the STT service (named ``stt``), or None when nothing needs transcribing.
        providers: vendor per service name, e.g. ``{"llm": "openai"}``.
        models: model per service name, for metrics that carry none.
        system_instruction: the system prompt the LLM was configured with.
    """

    llm: LLMService[Any]
    tts: TTSService
    stt: STTService | None = None
    providers: dict[str, str] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    system_instruction: str | None = None


ServicesFactory = Callable[[Settings, CallRequest], CallServices]


def system_prompt_for(settings: Settings, call: CallRequest) -> str:
    return call.bot_config.system_prompt or settings.flow_system_prompt


def llm_model_for(settings: Settings, call: CallRequest) -> str:
    return call.bot_config.llm_model or settings.flow_llm_model


def openai_llm(settings: Settings, call: CallRequest) -> LLMService[Any]:
    """The real OpenAI LLM service, honouring ``OPENAI_BASE_URL``."""
    from pipecat.services.openai.llm import OpenAILLMService

    return OpenAILLMService(
        name=LLM_NAME,
        api_key=settings.openai_api_key.get_secret_value() or None,
        base_url=settings.openai_base_url or None,
        settings=OpenAILLMService.Settings(
            model=llm_model_for(settings, call),
            system_instruction=system_prompt_for(settings, call),
        ),
    )


DEFAULT_VOICES = {"openai": "alloy", "deepgram": "aura-2-thalia-en"}


def configuration_problem(settings: Settings) -> str | None:
    """Why this instance cannot run bots with its settings, or None when it can."""
    if not settings.openai_api_key.get_secret_value():
        return "OPENAI_API_KEY is not set"
    if (
        settings.flow_tts_provider == "deepgram"
        and not settings.deepgram_api_key.get_secret_value()
    ):
        return "FLOW_TTS_PROVIDER=deepgram needs DEEPGRAM_API_KEY"
    return None


def default_services(settings: Settings, call: CallRequest) -> CallServices:
    """Services from settings: OpenAI LLM; OpenAI or Deepgram TTS; Deepgram STT when
    ``DEEPGRAM_API_KEY`` is set, else OpenAI's (no STT for a simulated call)."""
    openai_key = settings.openai_api_key.get_secret_value() or None
    base_url = settings.openai_base_url or None
    deepgram_key = settings.deepgram_api_key.get_secret_value()
    voice = (
        call.bot_config.voice
        or settings.flow_tts_voice
        or DEFAULT_VOICES[settings.flow_tts_provider]
    )
    providers: dict[str, str] = {LLM_NAME: "openai", TTS_NAME: settings.flow_tts_provider}
    models = {LLM_NAME: llm_model_for(settings, call)}

    tts: TTSService
    if settings.flow_tts_provider == "deepgram":
        from pipecat.services.deepgram.tts import DeepgramTTSService

        tts = DeepgramTTSService(
            name=TTS_NAME,
            api_key=deepgram_key,
            settings=DeepgramTTSService.Settings(voice=voice),
        )
        models[TTS_NAME] = voice  # Deepgram's voice is its model (aura-2-...)
    else:
        from pipecat.services.openai.tts import OpenAITTSService

        tts = OpenAITTSService(
            name=TTS_NAME,
            api_key=openai_key,
            base_url=base_url,
            settings=OpenAITTSService.Settings(model=settings.flow_tts_model, voice=voice),
        )
        models[TTS_NAME] = settings.flow_tts_model

    stt: STTService | None = None
    if call.transport != "simulated":
        if deepgram_key:
            from pipecat.services.deepgram.stt import DeepgramSTTService

            stt_model = settings.flow_stt_model or "nova-3-general"
            stt = DeepgramSTTService(
                name=STT_NAME,
                api_key=deepgram_key,
                settings=DeepgramSTTService.Settings(model=stt_model),
            )
            providers[STT_NAME] = "deepgram"
        else:
            from pipecat.services.openai.stt import OpenAISTTService

            stt_model = settings.flow_stt_model or "gpt-4o-transcribe"
            stt = OpenAISTTService(
                name=STT_NAME,
                api_key=openai_key,
                base_url=base_url,
                settings=OpenAISTTService.Settings(model=stt_model),
            )
            providers[STT_NAME] = "openai"
        models[STT_NAME] = stt_model

    return CallServices(
        llm=openai_llm(settings, call),
        tts=tts,
        stt=stt,
        providers=providers,
        models=models,
        system_instruction=system_prompt_for(settings, call),
    )


def daily_transport(call: CallRequest) -> BaseTransport:
    from pipecat.transports.daily.transport import DailyParams, DailyTransport

    if not call.room_url:
        raise ValueError("a daily call needs a room_url")
    return DailyTransport(
        call.room_url,
        call.token,
        "Flow bot",
        params=DailyParams(audio_in_enabled=True, audio_out_enabled=True),
    )


@dataclass
class BotCall:
    """One built call: the worker to run and what the runner reads afterwards."""

    worker: PipelineWorker
    transport: BaseTransport
    context: LLMContext
    transcript: Transcript
    recorder: UsageRecorder
    tracker: LLMInferenceTracker
    usage_processor: UsageMetricsProcessor
    greeting: str | None = None

    async def greet(self) -> None:
        if self.greeting:
            await self.worker.queue_frame(TTSSpeakFrame(self.greeting))


def build_call(
    call: CallRequest,
    settings: Settings,
    *,
    services: CallServices,
    meter: Meter,
    price_book: PriceBook,
    transport: BaseTransport | None = None,
    simulated: SimulatedParams | None = None,
    idle_timeout_seconds: float | None = None,
) -> BotCall:
    """Wire one call's pipeline. Nothing runs until the worker does."""
    greeting = call.bot_config.greeting if call.bot_config.greeting is not None else None
    greeting = greeting or settings.flow_greeting or None

    if transport is None:
        if call.transport == "simulated":
            params = simulated or SimulatedParams()
            params.expect_greeting = bool(greeting)
            transport = SimulatedTransport(call.script, params)
        else:
            transport = daily_transport(call)

    context = LLMContext()
    if call.transport == "simulated":
        # Turns are decided by the scripted caller: no audio to detect speech in.
        stop = ExternalUserTurnStopStrategy(timeout=0.05)
        strategies = ExternalUserTurnStrategies()
        strategies.stop = [stop]
        user_params = LLMUserAggregatorParams(user_turn_strategies=strategies)
    else:
        from pipecat.audio.vad.silero import SileroVADAnalyzer

        user_params = LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer())
    user_agg, assistant_agg = LLMContextAggregatorPair(context, user_params=user_params)

    transcript = Transcript()
    transcript.attach(user_agg, assistant_agg)

    attribution = Attribution(
        workflow_thread_id=UUID(call.workflow_thread_id),
        api_key_id=UUID(call.api_key_id),
        end_user_id=call.end_user_id,
    )
    recorder = UsageRecorder(
        attribution, meter, price_book, providers=services.providers, models=services.models
    )
    tracker = LLMInferenceTracker(
        recorder,
        context,
        llm_name=services.llm.name,
        provider=services.providers.get(services.llm.name, "openai"),
        model=services.models.get(services.llm.name) or llm_model_for(settings, call),
        system_instruction=services.system_instruction,
        name="llm-usage-tracker",
    )
    usage = UsageMetricsProcessor(recorder, name="usage-metrics")

    processors: list[FrameProcessor] = [transport.input()]
    if services.stt is not None:
        processors.append(services.stt)
    processors += [
        user_agg,
        services.llm,
        tracker,
        services.tts,
        transport.output(),
        assistant_agg,
        usage,
    ]
    worker = PipelineWorker(
        Pipeline(processors),
        params=PipelineParams(
            enable_metrics=True,
            enable_usage_metrics=True,
            send_initial_empty_metrics=False,
        ),
        enable_rtvi=False,
        idle_timeout_secs=idle_timeout_seconds,
        cancel_on_idle_timeout=True,
        cancel_runner_on_idle_timeout=False,
    )
    bot = BotCall(
        worker=worker,
        transport=transport,
        context=context,
        transcript=transcript,
        recorder=recorder,
        tracker=tracker,
        usage_processor=usage,
        greeting=greeting,
    )
    if call.transport == "daily":
        _follow_the_caller(bot)
    return bot


def _follow_the_caller(bot: BotCall) -> None:
    """In a Daily room the bot greets the caller when they join (not an empty room) and
    ends the call, gracefully so every usage metric is flushed, when they leave."""
    greeting, bot.greeting = bot.greeting, None

    @bot.transport.event_handler("on_first_participant_joined")
    async def _joined(_transport: Any, _participant: Any) -> None:
        if greeting:
            await bot.worker.queue_frame(TTSSpeakFrame(greeting))

    @bot.transport.event_handler("on_participant_left")
    async def _left(_transport: Any, _participant: Any, _reason: Any) -> None:
        await bot.worker.queue_frame(EndFrame())
