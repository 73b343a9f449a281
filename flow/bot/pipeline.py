"""Wires one call's Pipecat pipeline around its services, with its metering.

::

    pipeline: transport.in -> [stt] -> user aggregator -> [budget gate] -> llm
                  -> [budget gate] -> LLMInferenceTracker -> tts -> transport.out
                  -> assistant aggregator -> UsageMetricsProcessor
    realtime: transport.in -> user aggregator -> [budget gate] -> speech-to-speech llm
                  -> [budget gate] -> transport.out -> assistant aggregator
                  -> UsageMetricsProcessor

A realtime call has no tracker: the vendor reports the usage of every response, cut
off or not, so nothing is estimated; its turns are the server's (its voice activity
detection), its greeting a response the model is asked for.
The services come from :mod:`flow.bot.services`. Usage metrics are on
(``enable_usage_metrics``), the zero-valued start-up metrics are off. A call built
without a meter is the same Pipecat pipeline without Flow's metering (no tracker, no
usage processor): the baseline the benchmarks measure Flow's cost against. Transports:
``daily`` (a Daily room), ``webrtc`` (a caller's peer connection, :mod:`flow.bot.webrtc`,
built by the runner), ``twilio`` (a phone call's Media Stream, :mod:`flow.bot.twilio`,
built by the runner) and ``simulated`` (:mod:`flow.bot.simulated`). On real audio
Silero VAD finds the caller's speech (``FLOW_VAD_STOP_SECS``) and the turn ends by
Pipecat's smart-turn model or after a fixed silence (``FLOW_TURN_STOP``). Pipecat's
``UserBotLatencyObserver`` times each answer, from the end of the caller's speech to the
bot's first audio (``flow_voice_to_voice_seconds``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast
from uuid import UUID

from pipecat.frames.frames import EndFrame, LLMRunFrame, TTSSpeakFrame
from pipecat.observers.user_bot_latency_observer import UserBotLatencyObserver
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext, LLMContextMessage
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.transports.base_transport import BaseTransport
from pipecat.turns.user_stop import ExternalUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import ExternalUserTurnStrategies, UserTurnStrategies

from flow import metrics
from flow.bot import tracing
from flow.bot.contract import CallRequest
from flow.bot.inference_tracker import LLMInferenceTracker
from flow.bot.services import CallServices, llm_model_for
from flow.bot.simulated import SimulatedParams, SimulatedTransport
from flow.bot.transcript import Transcript
from flow.bot.usage_processor import Attribution, UsageMetricsProcessor, UsageRecorder
from flow.config import Settings
from flow.metering.meter import Meter
from flow.metering.pricing import PriceBook

log = logging.getLogger(__name__)


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


# The transport events by which a call follows its caller: (joined, left).
CALLER_EVENTS = {
    "daily": ("on_first_participant_joined", "on_participant_left"),
    "webrtc": ("on_client_connected", "on_client_disconnected"),
    "twilio": ("on_client_connected", "on_client_disconnected"),
}


def audio_turns(settings: Settings) -> LLMUserAggregatorParams:
    """The user aggregator of a call on real audio: Silero VAD and the turn-stop
    strategy from settings (Pipecat's default, the smart-turn model, or a fixed
    silence), their models the process's (:mod:`flow.bot.shared`)."""
    from pipecat.audio.vad.vad_analyzer import VADParams
    from pipecat.turns.user_stop import (
        BaseUserTurnStopStrategy,
        SpeechTimeoutUserTurnStopStrategy,
        TurnAnalyzerUserTurnStopStrategy,
    )

    from flow.bot.shared import CallSileroVAD, CallSmartTurn

    vad = CallSileroVAD(params=VADParams(stop_secs=settings.flow_vad_stop_secs))
    stop: BaseUserTurnStopStrategy
    if settings.flow_turn_stop == "timeout":
        stop = SpeechTimeoutUserTurnStopStrategy(
            user_speech_timeout=settings.flow_turn_stop_timeout_seconds
        )
    else:  # Pipecat's default stop strategy, named: its default loads the model per call
        stop = TurnAnalyzerUserTurnStopStrategy(turn_analyzer=CallSmartTurn())
    return LLMUserAggregatorParams(
        vad_analyzer=vad, user_turn_strategies=UserTurnStrategies(stop=[stop])
    )


# How a speech-to-speech model is asked to say the greeting.
REALTIME_GREETING = "The call has just connected. Greet the caller with these words: {greeting}"


@dataclass
class BotCall:
    """One built call: the worker to run and what the runner reads afterwards.
    ``caller_joined`` turns true when the caller joins a daily or webrtc call; the
    metering parts are None in a call built without a meter, ``tracker`` also in a
    realtime call (nothing is estimated there)."""

    worker: PipelineWorker
    transport: BaseTransport
    context: LLMContext
    transcript: Transcript
    recorder: UsageRecorder | None
    tracker: LLMInferenceTracker | None
    usage_processor: UsageMetricsProcessor | None
    greeting: str | None = None
    caller_joined: bool = False
    realtime: bool = False
    # How a speech-to-speech model says the call's last words (None: the TTS says them).
    last_words: Callable[[str], Awaitable[None]] | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def greet(self) -> None:
        """Say the greeting, once: through the TTS, or (realtime) as a response the
        model is asked for."""
        greeting, self.greeting = self.greeting, None
        if not greeting:
            return
        if self.realtime:
            message = {"role": "user", "content": REALTIME_GREETING.format(greeting=greeting)}
            self.context.add_message(cast(LLMContextMessage, message))
            await self.worker.queue_frame(LLMRunFrame())
        else:
            await self.worker.queue_frame(TTSSpeakFrame(greeting))

    async def hang_up_with(self, last_words: str) -> None:
        """Say ``last_words`` (after a reply in progress; the caller cannot cut them
        off), then end the call gracefully. A speech-to-speech model says them itself
        (in a task of their own: the caller of this does not wait for the words)."""
        if self.last_words is not None:
            task = asyncio.get_running_loop().create_task(
                self._say_then_end(self.last_words, last_words), name="last-words"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        goodbye = TTSSpeakFrame(last_words)
        goodbye.interruptible = False
        await self.worker.queue_frames([goodbye, EndFrame()])

    async def _say_then_end(self, say: Callable[[str], Awaitable[None]], words: str) -> None:
        try:
            await say(words)
        except Exception:  # the words are a courtesy: the call ends regardless
            log.warning("the call's last words could not be said", exc_info=True)
        if not self.worker.has_finished():
            await self.worker.queue_frame(EndFrame())


def build_call(
    call: CallRequest,
    settings: Settings,
    *,
    services: CallServices,
    meter: Meter | None,
    price_book: PriceBook,
    transport: BaseTransport | None = None,
    simulated: SimulatedParams | None = None,
    idle_timeout_seconds: float | None = None,
    llm_gates: tuple[FrameProcessor, FrameProcessor] | None = None,
) -> BotCall:
    """Wire one call's pipeline (``llm_gates``, when given, go in front of the LLM and
    right after it: the budget gates). Nothing runs until the worker does. Without a
    ``meter`` nothing of Flow's metering is wired in and nothing is recorded."""
    # An empty greeting in the call's config silences FLOW_GREETING: the bot waits.
    configured = call.bot_config.greeting
    greeting = (configured if configured is not None else settings.flow_greeting) or None
    realtime = services.realtime

    if transport is None:
        if call.transport == "simulated":
            params = simulated or SimulatedParams()
            params.expect_greeting = bool(greeting)
            params.speaks_text = not realtime
            if realtime and params.caller_audio_seconds <= 0:
                raise ValueError("a realtime call needs the simulated caller to send audio")
            transport = SimulatedTransport(call.script, params)
        elif call.transport == "daily":
            transport = daily_transport(call)
        else:
            raise ValueError(f"a {call.transport} call needs its transport")

    context = LLMContext()
    if realtime:
        # The model's server hears the turns; the service proposes them.
        user_params = LLMUserAggregatorParams()
    elif call.transport == "simulated":
        # Turns are decided by the scripted caller: no audio to detect speech in.
        stop = ExternalUserTurnStopStrategy(timeout=0.05)
        strategies = ExternalUserTurnStrategies()
        strategies.stop = [stop]
        user_params = LLMUserAggregatorParams(user_turn_strategies=strategies)
    else:
        user_params = audio_turns(settings)
    user_agg, assistant_agg = LLMContextAggregatorPair(context, user_params=user_params)

    transcript = Transcript()
    if realtime:
        transcript.attach_realtime(services.llm, assistant_agg)
    else:
        transcript.attach(user_agg, assistant_agg)

    recorder = tracker = usage = None
    if meter is not None:
        attribution = Attribution(
            workflow_thread_id=UUID(call.workflow_thread_id),
            api_key_id=UUID(call.api_key_id),
            end_user_id=call.end_user_id,
        )
        recorder = UsageRecorder(
            attribution, meter, price_book, providers=services.providers, models=services.models
        )
        usage = UsageMetricsProcessor(recorder, name="usage-metrics")
    if recorder is not None and not realtime:
        tracker = LLMInferenceTracker(
            recorder,
            context,
            llm_name=services.llm.name,
            provider=services.providers.get(services.llm.name, "openai"),
            model=services.models.get(services.llm.name) or llm_model_for(settings, call),
            system_instruction=services.system_instruction,
            name="llm-usage-tracker",
        )

    gate_in, gate_out = llm_gates or (None, None)
    stages: list[FrameProcessor | None] = [
        transport.input(),
        services.stt,
        user_agg,
        gate_in,
        services.llm,
        gate_out,
        tracker,
        services.tts,
        transport.output(),
        assistant_agg,
        usage,
    ]
    processors = [p for p in stages if p is not None]
    latency = UserBotLatencyObserver()

    @latency.event_handler("on_latency_measured")
    async def _voice_to_voice(_observer: Any, seconds: float) -> None:
        metrics.VOICE_TO_VOICE.observe(seconds)

    worker = PipelineWorker(
        Pipeline(processors),
        params=PipelineParams(
            enable_metrics=True,
            enable_usage_metrics=True,
            send_initial_empty_metrics=False,
        ),
        enable_rtvi=False,
        enable_tracing=tracing.enabled(),
        conversation_id=call.workflow_thread_id,
        additional_span_attributes={
            "flow.workflow_thread_id": call.workflow_thread_id,
            "flow.api_key_id": call.api_key_id,
        },
        observers=[latency],
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
        realtime=realtime,
        last_words=getattr(services.llm, "say_last_words", None) if realtime else None,
    )
    if call.transport in CALLER_EVENTS:
        _follow_the_caller(bot, *CALLER_EVENTS[call.transport])
    return bot


def _follow_the_caller(bot: BotCall, joined: str, left: str) -> None:
    """In a Daily room or over WebRTC the bot greets the caller when they join (not an
    empty room, not a peer still connecting) and ends the call, gracefully so every
    usage metric is flushed, when they leave (hang up, or their connection fails)."""
    greeting, bot.greeting = bot.greeting, None

    @bot.transport.event_handler(joined)
    async def _joined(_transport: Any, *_args: Any) -> None:
        bot.caller_joined = True
        bot.greeting = greeting
        await bot.greet()

    @bot.transport.event_handler(left)
    async def _left(_transport: Any, *_args: Any) -> None:
        await bot.worker.queue_frame(EndFrame())
