"""What the calls of one process share: loaded once, off the event loop, at start-up.

A call's bot hands its speech to the WebRTC transport in 40 ms pieces and Pipecat sends
silence when the next piece is 10 ms late, so any pause of the event loop that long
while a bot speaks is heard as a gap in its speech. Building a call used to pause the
loop for 0.1-0.2 s (each OpenAI service's HTTP client loading the system's CA
certificates, a Silero VAD and a smart-turn ONNX session per call), and the first
inference of a process loaded the tiktoken encoding. So:

- **TLS**: one SSL context (the certificates, loaded once) for the HTTP clients of
  every call's OpenAI services (:func:`openai_http_client`, :class:`OpenAILLM`). Each
  service still has a client of its own with the limits it had; an ``SSLContext``
  holds no connection and nothing closes it (Pipecat never closes these clients).
- **Audio models**: one ONNX Runtime session for Silero VAD and one for the smart-turn
  model. A session holds the weights and nothing of a call: Silero's recurrent state
  goes in and out with each window and stays in the call's own analyzer
  (:class:`CallSileroVAD`), the smart-turn model is stateless
  (:class:`CallSmartTurn`), and ONNX Runtime runs one session from several threads at
  once (each analyzer runs its model on a thread of its own).
- :func:`warm_up` loads all of it in a thread, with what a call would otherwise load
  at its first use: the modules it imports, what the OpenAI SDK loads at its first
  request of each kind (rehearsed in memory), genai-prices' data and the LLM's
  tiktoken encoding; then it freezes all that out of the garbage collector's reach
  (``gc.freeze``). The API's lifespan awaits it before serving.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import importlib
import json
import logging
import ssl
from functools import cache
from typing import Any

import httpx2
from genai_prices.data_snapshot import get_snapshot
from openai import AsyncOpenAI, DefaultAsyncHttpxClient
from pipecat.audio.turn.smart_turn.base_smart_turn import BaseSmartTurn
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.utils.env import env_truthy
from pipecat.utils.http import connection_limits

from flow.config import Settings
from flow.metering import tokenizer

log = logging.getLogger(__name__)

# Imported by a call's first build; warm_up imports them instead.
CALL_MODULES = (
    "flow.bot.pipeline",
    "flow.bot.realtime",
    "flow.bot.transcription",
    "pipecat.services.openai.tts",
    "pipecat.transports.smallwebrtc.connection",
    "pipecat.transports.smallwebrtc.transport",
    "pipecat.turns.user_stop.turn_analyzer_user_turn_stop_strategy",
    "pipecat.workers.runner",
)
DEEPGRAM_MODULES = ("pipecat.services.deepgram.stt", "pipecat.services.deepgram.tts")


@cache
def tls_context() -> ssl.SSLContext:
    """The SSL context an OpenAI client builds by default (the system's certificates,
    ``SSL_CERT_FILE``/``SSL_CERT_DIR`` honoured), built once."""
    return httpx2.create_ssl_context()


def openai_http_client(**options: Any) -> Any:
    """A new HTTP client for an OpenAI client, with the SDK's defaults (``options``
    override them) and the process's :func:`tls_context`."""
    return DefaultAsyncHttpxClient(verify=tls_context(), **options)


class OpenAILLM(OpenAILLMService):
    """Pipecat's OpenAI LLM service whose client uses the process's :func:`tls_context`;
    otherwise the client Pipecat builds (its connection limits)."""

    def create_client(
        self,
        api_key: Any = None,
        base_url: Any = None,
        organization: Any = None,
        project: Any = None,
        default_headers: Any = None,
        **kwargs: Any,
    ) -> AsyncOpenAI:
        return AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            organization=organization,
            project=project,
            http_client=openai_http_client(
                limits=connection_limits(
                    max_keepalive_connections=100, max_connections=1000, keepalive_expiry=None
                )
            ),
            default_headers=default_headers,
        )


@cache
def _silero() -> SileroVADAnalyzer:
    """The process's Silero VAD, loaded once: only its model's session is used."""
    return SileroVADAnalyzer()


@cache
def _smart_turn() -> LocalSmartTurnAnalyzerV3:
    """The process's smart-turn analyzer, loaded once: only its session is used."""
    return LocalSmartTurnAnalyzerV3()


class CallSileroVAD(SileroVADAnalyzer):
    """Pipecat's Silero VAD analyzer for one call, over the process's ONNX session: the
    analyzer and the model's state (recurrent state, context, resets) are the call's.

    Parameters:
        params: the VAD's thresholds and timings.
    """

    def __init__(self, *, params: VADParams | None = None) -> None:
        # SileroVADAnalyzer.__init__ but for loading the model.
        VADAnalyzer.__init__(self, params=params)
        self._model = copy.copy(_silero()._model)
        self._model.reset_states()
        self._windows_since_reset = 0
        self._low_confidence_windows = 0


class CallSmartTurn(LocalSmartTurnAnalyzerV3):
    """Pipecat's smart-turn analyzer (v3) for one call, over the process's ONNX session;
    the audio it collects and its thread are the call's."""

    def __init__(self) -> None:
        # LocalSmartTurnAnalyzerV3.__init__ but for loading the model.
        BaseSmartTurn.__init__(self)
        self._log_data = env_truthy("PIPECAT_SMART_TURN_LOG_DATA", default=False)
        self._session = _smart_turn()._session


# In-memory answers to the requests a call makes (OpenAI's formats, nothing sent).
_REHEARSAL_CHUNKS = (
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi."}}]},
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}},
)
_REHEARSAL_TRANSCRIPTION = {"text": "Hi.", "usage": {"type": "duration", "seconds": 1}}


def _rehearsal_answer(request: httpx2.Request) -> httpx2.Response:
    path = request.url.path
    if path.endswith("/chat/completions"):
        head = {"id": "rehearsal", "object": "chat.completion.chunk", "created": 0, "model": "m"}
        events = [f"data: {json.dumps({**head, **chunk})}\n\n" for chunk in _REHEARSAL_CHUNKS]
        body = "".join(events) + "data: [DONE]\n\n"
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, text=body)
    if path.endswith("/audio/transcriptions"):
        return httpx2.Response(200, json=_REHEARSAL_TRANSCRIPTION)
    return httpx2.Response(200, content=bytes(320))  # speech: PCM


async def _rehearse_openai_requests() -> None:
    """One request of each kind a call makes (a streamed completion, a transcription, a
    streamed speech), answered in memory: the SDK loads at its first request of each
    what it loads lazily (its resources' modules, parsers, type checks' caches)."""
    client = AsyncOpenAI(
        api_key="unused",
        base_url="http://rehearsal.invalid/v1",
        http_client=openai_http_client(transport=httpx2.MockTransport(_rehearsal_answer)),
        max_retries=0,
    )
    async with client:
        stream = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "Hi."}],
            stream=True,
            stream_options={"include_usage": True},
        )
        async for _chunk in stream:
            pass
        await client.audio.transcriptions.create(
            file=("audio.wav", bytes(44), "audio/wav"), model="m"
        )
        async with client.audio.speech.with_streaming_response.create(
            model="m", voice="alloy", input="Hi.", response_format="pcm"
        ) as speech:
            async for _part in speech.iter_bytes():
                pass
    # Its first real connection loads the HTTP stack's async backend.
    importlib.import_module("anyio._backends._asyncio")


def warm_up_now(settings: Settings) -> None:
    """Load what every call uses, now (blocking, and it runs an event loop of its own:
    call it in a thread)."""
    modules = list(CALL_MODULES)
    if settings.deepgram_api_key.get_secret_value() or settings.flow_tts_provider == "deepgram":
        modules += DEEPGRAM_MODULES
    for name in modules:
        importlib.import_module(name)
    tls_context()
    _silero()
    _smart_turn()
    asyncio.run(_rehearse_openai_requests())
    get_snapshot()  # the price data genai-prices otherwise loads at a call's first price
    if not tokenizer.preload(settings.flow_llm_model):
        log.info("the tiktoken encoding of %s loads at first use", settings.flow_llm_model)
    _freeze_once()


@cache
def _freeze_once() -> None:
    """Take what the process has loaded by now out of the garbage collector's reach,
    once a process: it lives as long as the process, and a full collection walking it
    (some 200,000 objects) held the event loop for 0.1-0.15 s while calls talked."""
    gc.collect()
    gc.freeze()


async def warm_up(settings: Settings) -> None:
    """:func:`warm_up_now` in a thread, so the event loop never waits for it. A failure
    is logged: what did not load loads when a call first needs it, as it would have."""
    try:
        await asyncio.to_thread(warm_up_now, settings)
    except Exception:
        log.exception("warming up the bot's models failed; they load at the first call")
