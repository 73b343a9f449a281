"""What the calls of a process share (:mod:`flow.bot.shared`) changes nothing a call hears
or decides: the shared models answer as Pipecat's own per-call ones, each call keeps its
own state, and every OpenAI service keeps a client of its own with its limits."""

from __future__ import annotations

import asyncio
import gc
import logging
import uuid
from typing import Any

import numpy as np
import pytest
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams, VADState
from pydantic import SecretStr

from flow.bot import shared
from flow.bot.contract import BotConfig, CallRequest
from flow.bot.services import default_services
from flow.bot.shared import CallSileroVAD, CallSmartTurn, tls_context
from flow.config import Settings
from tests.bot.webrtc_caller import recording

RATE = 16000
CHUNK_BYTES = 640  # 20 ms, as the transport hands audio in
SILENCE = bytes(RATE * 2 * 3)  # 3 s: the model's state is reset in it


def settings(**kw: Any) -> Settings:
    return Settings(_env_file=None, openai_api_key=SecretStr("sk-test"), **kw)  # type: ignore[arg-type,call-arg]


def webrtc_call() -> CallRequest:
    return CallRequest(
        workflow_thread_id=str(uuid.uuid4()),
        api_key_id=str(uuid.uuid4()),
        transport="webrtc",
        bot_config=BotConfig(),
    )


async def listen(analyzer: VADAnalyzer, pcm: bytes) -> tuple[list[VADState], list[float]]:
    """Every state the analyzer gives a 20 ms chunk, and every confidence it computed."""
    confidences: list[float] = []
    scored = analyzer.voice_confidence

    def voice_confidence(buffer: bytes) -> float:
        confidence = scored(buffer)
        confidences.append(float(np.asarray(confidence).item()))
        return confidence

    analyzer.voice_confidence = voice_confidence  # type: ignore[method-assign]
    analyzer.set_sample_rate(RATE)
    states = []
    for i in range(0, len(pcm), CHUNK_BYTES):
        states.append(await analyzer.analyze_audio(pcm[i : i + CHUNK_BYTES]))
    await analyzer.cleanup()
    return states, confidences


async def test_calls_hearing_at_once_through_the_shared_vad_hear_what_pipecats_own_hears() -> None:
    params = VADParams(stop_secs=0.5)
    first = (recording("order_status") + SILENCE) * 2
    second = SILENCE[:RATE] + recording("thank_you") + SILENCE
    alone = [
        await listen(SileroVADAnalyzer(params=params), first),
        await listen(SileroVADAnalyzer(params=params), second),
    ]
    together = await asyncio.gather(
        listen(CallSileroVAD(params=params), first),
        listen(CallSileroVAD(params=params), second),
    )
    for (states, confidences), (stock_states, stock_confidences) in zip(
        together, alone, strict=True
    ):
        assert VADState.SPEAKING in states
        assert states == stock_states
        assert confidences == pytest.approx(stock_confidences, abs=1e-6)


def test_a_calls_vad_is_pipecats_analyzer_with_the_process_session() -> None:
    stock, a, b = SileroVADAnalyzer(), CallSileroVAD(), CallSileroVAD()
    assert vars(a).keys() == vars(stock).keys()
    assert vars(a._model).keys() == vars(stock._model).keys()
    assert a._model.session is b._model.session
    assert a._model is not b._model and a._executor is not b._executor
    assert not np.any(a._model._state)


def test_a_calls_smart_turn_is_pipecats_with_the_process_session_and_predicts_the_same() -> None:
    stock, a, b = LocalSmartTurnAnalyzerV3(), CallSmartTurn(), CallSmartTurn()
    assert vars(a).keys() == vars(stock).keys()
    assert a._session is b._session
    speech = np.frombuffer(recording("order_status"), dtype=np.int16).astype(np.float32) / 32768
    for audio in (speech, speech[: RATE // 2]):
        assert a._predict_endpoint(audio) == stock._predict_endpoint(audio)


def pool(service: Any) -> Any:
    return service._client._client._transport._pool


def test_each_openai_service_has_its_own_client_over_the_process_ssl_context() -> None:
    calls = [default_services(settings(), webrtc_call()) for _ in range(2)]
    services = [s for c in calls for s in (c.llm, c.tts, c.stt)]
    clients = {id(s._client._client) for s in services}  # type: ignore[union-attr]
    assert len(clients) == len(services)
    assert all(pool(s)._ssl_context is tls_context() for s in services)
    for c in calls:
        # Pipecat's LLM keeps its connections; the others keep the SDK's defaults.
        assert pool(c.llm)._keepalive_expiry is None
        assert pool(c.tts)._keepalive_expiry == pool(c.stt)._keepalive_expiry == 5.0
        assert pool(c.llm)._max_connections == pool(c.tts)._max_connections == 1000


async def test_a_failed_warm_up_leaves_loading_to_the_first_call(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_settings: Settings) -> None:
        raise OSError("no model")

    monkeypatch.setattr(shared, "warm_up_now", broken)
    with caplog.at_level(logging.ERROR, logger="flow.bot.shared"):
        await shared.warm_up(settings())
    assert "load at the first call" in caplog.text


async def test_warming_up_loads_every_model_and_sends_nothing() -> None:
    # Its rehearsed requests go to a host that does not resolve: one sent would fail.
    await asyncio.to_thread(shared.warm_up_now, settings())
    assert shared._silero.cache_info().currsize == shared._smart_turn.cache_info().currsize == 1
    assert gc.get_freeze_count() > 0
