"""The services a call gets from settings, and that every default they meter is priced
(a default model without a price would put every call's voice usage in 'unpriced')."""

from __future__ import annotations

import uuid
from decimal import Decimal

from pydantic import SecretStr

from flow.bot.contract import BotConfig, CallRequest, configuration_problem
from flow.bot.services import STT_NAME, TTS_NAME, default_services
from flow.config import Settings
from flow.metering.pricing import PriceBook


def daily_call(voice: str | None = None) -> CallRequest:
    return CallRequest(
        workflow_thread_id=str(uuid.uuid4()),
        api_key_id=str(uuid.uuid4()),
        transport="daily",
        bot_config=BotConfig(voice=voice),
        room_url="https://example.daily.co/room",
    )


def settings(**kw: object) -> Settings:
    """Settings from these values and defaults only (no .env of a developer's)."""
    return Settings(_env_file=None, openai_api_key=SecretStr("sk-test"), **kw)  # type: ignore[arg-type,call-arg]


def test_openai_by_default_and_every_default_is_priced() -> None:
    services = default_services(settings(), daily_call())
    assert type(services.tts).__name__ == "OpenAITTSService"
    assert type(services.stt).__name__ == "MeteredOpenAISTTService"  # OpenAISTTService
    assert services.providers[TTS_NAME] == services.providers[STT_NAME] == "openai"
    book = PriceBook()
    assert book.tts("openai", services.models[TTS_NAME], 100) is not None
    assert book.stt("openai", services.models[STT_NAME], Decimal(10)) is not None


def test_deepgram_transcribes_and_speaks_when_configured_and_is_priced() -> None:
    s = settings(deepgram_api_key=SecretStr("dg-test"), flow_tts_provider="deepgram")
    assert configuration_problem(s) is None
    services = default_services(s, daily_call())
    assert type(services.stt).__name__ == "DeepgramSTTService"
    assert type(services.tts).__name__ == "DeepgramTTSService"
    assert services.models[TTS_NAME] == "aura-2-thalia-en"  # Deepgram's default voice
    book = PriceBook()
    assert book.stt("deepgram", services.models[STT_NAME], Decimal(60)) is not None
    assert book.tts("deepgram", services.models[TTS_NAME], 100) is not None


def test_a_join_may_choose_the_voice() -> None:
    services = default_services(settings(), daily_call(voice="nova"))
    assert services.tts is not None
    assert services.tts._settings.voice == "nova"  # type: ignore[attr-defined]


def test_simulated_calls_need_no_stt() -> None:
    call = daily_call()
    call.transport = "simulated"
    assert default_services(settings(), call).stt is None


def test_configuration_problems_are_named() -> None:
    bare = Settings(_env_file=None)  # type: ignore[call-arg]
    assert configuration_problem(bare) == "OPENAI_API_KEY is not set"
    assert "DEEPGRAM_API_KEY" in str(configuration_problem(settings(flow_tts_provider="deepgram")))


def test_a_realtime_call_gets_one_speech_to_speech_service_configured_from_settings() -> None:
    call = daily_call()
    call.bot_config = BotConfig(mode="realtime")
    s = settings(openai_realtime_base_url="ws://127.0.0.1:9/v1/realtime")
    services = default_services(s, call)
    assert services.realtime and services.tts is None and services.stt is None
    assert type(services.llm).__name__ == "RealtimeLLMService"
    assert services.llm.base_url == "ws://127.0.0.1:9/v1/realtime?model=gpt-realtime"  # type: ignore[attr-defined]
    assert services.models == {"llm": "gpt-realtime", STT_NAME: "gpt-4o-mini-transcribe"}
    session = services.llm._settings.session_properties  # type: ignore[attr-defined]
    assert session.audio.input.transcription.model == "gpt-4o-mini-transcribe"
    assert session.audio.output.voice == "alloy"
    # The transcription is priced by its tokens, the model per modality.
    book = PriceBook()
    price = book.stt(
        "openai", "gpt-4o-mini-transcribe", Decimal(3), input_tokens=40, output_tokens=9
    )
    assert price is not None and not isinstance(price, Decimal)
    assert book.llm("openai", "gpt-realtime", input_tokens=100, output_tokens=10) is not None


def test_a_realtime_call_takes_its_model_and_voice_from_the_join_or_the_settings() -> None:
    call = daily_call()
    call.bot_config = BotConfig(mode="realtime", llm_model="gpt-realtime-mini", voice="cedar")
    s = settings(flow_realtime_transcription_model="whisper-1", flow_realtime_voice="ash")
    services = default_services(s, call)
    assert services.llm.base_url == "wss://api.openai.com/v1/realtime?model=gpt-realtime-mini"  # type: ignore[attr-defined]
    session = services.llm._settings.session_properties  # type: ignore[attr-defined]
    assert (session.audio.input.transcription.model, session.audio.output.voice) == (
        "whisper-1",
        "cedar",
    )
    call.bot_config = BotConfig(mode="realtime")
    session = default_services(s, call).llm._settings.session_properties  # type: ignore[attr-defined]
    assert session.audio.output.voice == "ash"
