"""Speech-to-speech calls: one OpenAI Realtime session hears the caller and speaks.

:func:`realtime_services` builds the services of a ``mode: "realtime"`` call: Pipecat's
``OpenAIRealtimeLLMService`` (named ``llm``) at ``OPENAI_REALTIME_BASE_URL``, with the
call's model (``FLOW_REALTIME_MODEL`` by default), voice and system prompt, and input
transcription always on (``FLOW_REALTIME_TRANSCRIPTION_MODEL``) so the call has a
transcript and its cost is known. There is no STT or TTS service: the model does both.

:class:`RealtimeLLMService` is metered the way OpenAI bills a session:

- every ``response.done`` carrying ``usage`` (a response the caller cut off, status
  ``cancelled``, included: OpenAI bills what it generated) becomes Pipecat's
  ``LLMUsageMetricsData`` with its audio and cached-audio parts, here named by the
  response id (:class:`flow.bot.reported_usage.SourcedTokenUsage`) so its event's id
  derives from it;
- ``conversation.item.input_audio_transcription.completed`` carries the transcription's
  own ``usage`` (tokens, or seconds for ``whisper-1``), billed apart from the responses
  and dropped by Pipecat's event model. The service reads that server event raw and
  reports a :class:`flow.bot.reported_usage.TranscriptionUsage` under the ``stt`` name
  and the transcription model, named by the item id, with the item's seconds (from the
  server's speech start and stop) beside its tokens;
- a call that ends while the model answers (the caller hangs up, the call is stopped)
  cancels the answer and waits briefly for its ``response.done`` before the socket
  closes, so that answer is billed too;
- a call ended with last words (its budget spent, the instance shutting down) says them
  through :meth:`RealtimeLLMService.say_last_words`: a short response outside the
  conversation, billed like any other.

A response the caller talked over (``response.done`` with status ``cancelled``) is
followed downstream by an ``InterruptionFrame`` before its end, so the assistant turn is
recorded as interrupted whichever way the pipeline's own interruption (from the
caller's speech, by way of the user aggregator and the task) races the response's end.

It also tells ``on_user_transcript(service, text, started_at)`` each caller turn the
model transcribed: the call's transcript takes the caller's words from there. And when
the caller speaks first (no greeting), the first context the aggregators hand it is
adopted as it is: the session already holds those turns.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    InterruptionFrame,
    LLMFullResponseStartFrame,
    MetricsFrame,
)
from pipecat.metrics.metrics import LLMTokenUsage, STTUsageMetricsData
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.openai.realtime import events
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from pipecat.utils.time import time_now_iso8601

from flow.bot.contract import CallRequest
from flow.bot.reported_usage import SourcedTokenUsage, TranscriptionUsage
from flow.bot.services import (
    LLM_NAME,
    STT_NAME,
    CallServices,
    llm_model_for,
    system_prompt_for,
)
from flow.config import Settings

log = logging.getLogger(__name__)

OPENAI_REALTIME_URL = "wss://api.openai.com/v1/realtime"
# How long a call that ends mid-answer waits for that answer's usage.
SETTLE_SECONDS = 2.0
# How long the call's last words may take (they are short) before the call ends anyway.
LAST_WORDS_SECONDS = 15.0
LAST_WORDS = "Say exactly these words, and nothing else: "
SPEECH_STARTED = "input_audio_buffer.speech_started"
SPEECH_STOPPED = "input_audio_buffer.speech_stopped"
TRANSCRIBED = "conversation.item.input_audio_transcription.completed"
# Substrings of the raw server events read before Pipecat parses them (no audio delta,
# base64 without "." or "_", ever contains one).
_TAPPED = ("input_audio_buffer.speech_", TRANSCRIBED)

ServerEventHandler = Callable[[dict[str, Any]], Awaitable[None]]


class _ServerEventTap:
    """The session's websocket, read through: the server events Flow meters are handed
    over raw before Pipecat parses them; everything else passes to the socket."""

    def __init__(self, websocket: Any, on_event: ServerEventHandler) -> None:
        self._websocket = websocket
        self._on_event = on_event

    def __getattr__(self, name: str) -> Any:
        return getattr(self._websocket, name)

    async def __aiter__(self) -> AsyncIterator[Any]:
        async for message in self._websocket:
            text = message if isinstance(message, str) else bytes(message).decode(errors="replace")
            if any(marker in text for marker in _TAPPED):
                try:
                    await self._on_event(json.loads(text))
                except Exception:  # metering must never break the session
                    log.exception("a realtime server event could not be metered")
            yield message


class RealtimeLLMService(OpenAIRealtimeLLMService):
    """Pipecat's OpenAI Realtime service, reporting the usage OpenAI bills.

    Parameters:
        transcription_model: the session's input transcription model (its usage is
            reported under that model).
    """

    def __init__(self, *, transcription_model: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._transcription_model = transcription_model
        self._speech_ms: dict[str, tuple[Any, Any]] = {}
        self._spoken_at: dict[str, str] = {}
        self._done_response_id: str | None = None
        self._caller_spoke = False
        self._response_settled = asyncio.Event()
        self._settling = False
        self._register_event_handler("on_user_transcript", sync=True)

    async def _receive_task_handler(self) -> None:
        websocket = self._websocket
        if websocket is not None and not isinstance(websocket, _ServerEventTap):
            self._websocket = _ServerEventTap(websocket, self._on_server_event)
        await super()._receive_task_handler()

    async def _handle_context(self, context: LLMContext, direction: FrameDirection) -> None:
        if self._context is None and self._caller_spoke:
            # No greeting, and the caller spoke first: the session's conversation already
            # holds every turn of this first context. Pipecat would replay it as a saved
            # conversation and ask for a response of its own: a duplicate, and billed.
            self._context = context
            self._llm_needs_conversation_setup = False
            await self._process_completed_function_calls(send_new_results=False)
            return
        await super()._handle_context(context, direction)

    async def handle_evt_input_audio_transcription_completed(self, evt: Any) -> None:
        await super().handle_evt_input_audio_transcription_completed(evt)
        started_at = self._spoken_at.pop(evt.item_id, None) or time_now_iso8601()
        await self._call_event_handler("on_user_transcript", evt.transcript, started_at)

    async def _handle_evt_response_done(self, evt: Any) -> None:
        self._done_response_id = evt.response.id
        try:
            if getattr(evt.response, "status", None) == "cancelled" and not self._settling:
                # The vendor's word that the caller cut this answer off: the turn ends
                # interrupted, not as a whole answer, even when the response's end
                # overtakes the interruption on its way round the pipeline.
                await self.push_frame(InterruptionFrame())
            await super()._handle_evt_response_done(evt)
        finally:
            self._done_response_id = None
            self._response_settled.set()

    async def stop(self, frame: EndFrame) -> None:
        await self._settle_response()
        await super().stop(frame)
        self._response_settled.set()  # nothing more will come: release any waiter

    async def cancel(self, frame: CancelFrame) -> None:
        await self._settle_response()
        await super().cancel(frame)
        self._response_settled.set()

    async def _settle_response(self) -> None:
        """A call that ends while the model answers: cancel the answer and wait (briefly)
        for its ``response.done``, whose usage OpenAI bills, before the socket closes."""
        self._response_settled.clear()
        if not self._response_active or self._websocket is None:
            return
        self._settling = True
        await self.send_client_event(events.ResponseCancelEvent())
        try:
            await asyncio.wait_for(self._response_settled.wait(), SETTLE_SECONDS)
        except TimeoutError:
            log.warning("the last response's usage did not arrive: it is not metered")
        finally:
            self._settling = False

    async def say_last_words(self, words: str) -> None:
        """Say ``words`` as the call's last: turn detection off (the caller can neither
        talk over them nor start another answer), any answer in progress cancelled (its
        usage waited for), then a response outside the conversation whose only input is
        the instruction to say them (so it bills that instruction and the words, not the
        whole conversation again); returns when its ``response.done`` has come, or after
        :data:`LAST_WORDS_SECONDS`."""
        if self._websocket is None:
            return
        quiet = events.SessionProperties(
            audio=events.AudioConfiguration(input=events.AudioInput(turn_detection=False))
        )
        await self.send_client_event(events.SessionUpdateEvent(session=quiet))
        await self._settle_response()
        self._response_settled.clear()
        asked = events.ResponseProperties(instructions=LAST_WORDS + words)
        create = events.ResponseCreateEvent(response=asked).model_dump(exclude_none=True)
        # Outside the conversation, with no input but the instruction (Pipecat's event
        # model has neither field).
        create["response"].update({"conversation": "none", "input": []})
        # No conversation item announces this response: its turn starts here (its
        # response.done ends it), so the transcript holds the words.
        await self.push_frame(LLMFullResponseStartFrame())
        await self._ws_send(create)
        try:
            await asyncio.wait_for(self._response_settled.wait(), LAST_WORDS_SECONDS)
        except TimeoutError:
            log.warning("the last words were not said in %.0f s: the call ends", LAST_WORDS_SECONDS)

    async def start_llm_usage_metrics(self, tokens: LLMTokenUsage) -> None:
        if self._done_response_id:
            tokens = SourcedTokenUsage(**tokens.model_dump(), source_id=self._done_response_id)
        await super().start_llm_usage_metrics(tokens)

    async def _on_server_event(self, event: dict[str, Any]) -> None:
        kind, item_id = event.get("type"), event.get("item_id")
        if not isinstance(item_id, str):
            return
        if kind == SPEECH_STARTED:
            self._caller_spoke = True
            self._speech_ms[item_id] = (event.get("audio_start_ms"), None)
            self._spoken_at[item_id] = time_now_iso8601()
        elif kind == SPEECH_STOPPED:
            started = self._speech_ms.get(item_id, (None, None))[0]
            self._speech_ms[item_id] = (started, event.get("audio_end_ms"))
        elif kind == TRANSCRIBED:
            started, stopped = self._speech_ms.pop(item_id, (None, None))
            usage = event.get("usage")
            if not usage:
                log.warning("transcription of %s reported no usage: not metered", item_id)
                return
            seconds = 0.0
            if isinstance(started, int) and isinstance(stopped, int) and stopped > started:
                seconds = (stopped - started) / 1000
            reported = TranscriptionUsage.from_openai(
                usage, audio_seconds=seconds, source_id=item_id
            )
            await self.push_frame(
                MetricsFrame(
                    data=[
                        STTUsageMetricsData(
                            processor=STT_NAME, model=self._transcription_model, value=reported
                        )
                    ]
                )
            )


def realtime_services(settings: Settings, call: CallRequest) -> CallServices:
    """The services of a realtime call: the speech-to-speech model alone."""
    model = llm_model_for(settings, call)
    transcription = settings.flow_realtime_transcription_model
    session = events.SessionProperties(
        audio=events.AudioConfiguration(
            input=events.AudioInput(
                transcription=events.InputAudioTranscription(model=transcription)
            ),
            output=events.AudioOutput(voice=call.bot_config.voice or settings.flow_realtime_voice),
        )
    )
    llm = RealtimeLLMService(
        name=LLM_NAME,
        api_key=settings.openai_api_key.get_secret_value(),
        base_url=settings.openai_realtime_base_url or OPENAI_REALTIME_URL,
        transcription_model=transcription,
        settings=RealtimeLLMService.Settings(
            model=model,
            system_instruction=system_prompt_for(settings, call),
            session_properties=session,
        ),
    )
    return CallServices(
        llm=llm,
        tts=None,
        providers={LLM_NAME: "openai", STT_NAME: "openai"},
        models={LLM_NAME: model, STT_NAME: transcription},
        system_instruction=system_prompt_for(settings, call),
        realtime=True,
    )
