"""Which vendors a call talks to: STT, LLM and TTS services chosen from settings.

:func:`default_services` builds the services of one call. In ``pipeline`` mode: OpenAI's
LLM; OpenAI's or Deepgram's TTS (``FLOW_TTS_PROVIDER``); Deepgram's STT when
``DEEPGRAM_API_KEY`` is set, else OpenAI's, metered by what each transcription reports
(:mod:`flow.bot.transcription`); a simulated call has no audio, so no STT. In
``realtime`` mode: one speech-to-speech model (:mod:`flow.bot.realtime`). Tests pass
their own :data:`ServicesFactory` (fake STT/TTS, the real OpenAI LLM pointed at a local
server).

Services get stable names (``stt``, ``llm``, ``tts``): a metric's ``processor`` is the
service's name, which is how usage is attributed to a vendor and a model.

Pipecat is imported only when services are built; the join route's check of the
settings (:func:`flow.bot.contract.configuration_problem`) lives with the API's
contract and needs none of this module. The OpenAI services' HTTP clients use
the process's SSL context (:mod:`flow.bot.shared`): building them loads no certificates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flow.bot.contract import CallRequest
from flow.config import Settings

if TYPE_CHECKING:
    from pipecat.services.llm_service import LLMService
    from pipecat.services.stt_service import STTService
    from pipecat.services.tts_service import TTSService

STT_NAME, LLM_NAME, TTS_NAME = "stt", "llm", "tts"


@dataclass
class CallServices:
    """The services of one call and the vendor and model behind each.

    Parameters:
        llm: the LLM service (named ``llm``).
        tts: the TTS service (named ``tts``); None when the LLM speaks (realtime).
        stt: the STT service (named ``stt``), or None when nothing needs transcribing.
        providers: vendor per service name, e.g. ``{"llm": "openai"}``.
        models: model per service name, for metrics that carry none.
        system_instruction: the system prompt the LLM was configured with.
        realtime: the LLM is a speech-to-speech model: it hears and speaks itself.
    """

    llm: LLMService[Any]
    tts: TTSService | None
    stt: STTService | None = None
    providers: dict[str, str] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    system_instruction: str | None = None
    realtime: bool = False


ServicesFactory = Callable[[Settings, CallRequest], CallServices]


def system_prompt_for(settings: Settings, call: CallRequest) -> str:
    return call.bot_config.system_prompt or settings.flow_system_prompt


def llm_model_for(settings: Settings, call: CallRequest) -> str:
    if call.bot_config.llm_model:
        return call.bot_config.llm_model
    if call.bot_config.mode == "realtime":
        return settings.flow_realtime_model
    return settings.flow_llm_model


def openai_llm(settings: Settings, call: CallRequest) -> LLMService[Any]:
    """The real OpenAI LLM service, honouring ``OPENAI_BASE_URL``."""
    from flow.bot.shared import OpenAILLM

    return OpenAILLM(
        name=LLM_NAME,
        api_key=settings.openai_api_key.get_secret_value() or None,
        base_url=settings.openai_base_url or None,
        settings=OpenAILLM.Settings(
            model=llm_model_for(settings, call),
            system_instruction=system_prompt_for(settings, call),
        ),
    )


DEFAULT_VOICES = {"openai": "alloy", "deepgram": "aura-2-thalia-en"}


def default_services(settings: Settings, call: CallRequest) -> CallServices:
    """Services from settings: OpenAI LLM; OpenAI or Deepgram TTS; Deepgram STT when
    ``DEEPGRAM_API_KEY`` is set, else OpenAI's (no STT for a simulated call). A realtime
    call's: the speech-to-speech model alone."""
    if call.bot_config.mode == "realtime":
        from flow.bot.realtime import realtime_services

        return realtime_services(settings, call)
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

        from flow.bot.shared import openai_http_client

        tts = OpenAITTSService(
            name=TTS_NAME,
            api_key=openai_key,
            base_url=base_url,
            http_client=openai_http_client(),
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
            from flow.bot.shared import openai_http_client
            from flow.bot.transcription import MeteredOpenAISTTService

            stt_model = settings.flow_stt_model or "gpt-4o-transcribe"
            stt = MeteredOpenAISTTService(
                name=STT_NAME,
                api_key=openai_key,
                base_url=base_url,
                http_client=openai_http_client(),
                settings=MeteredOpenAISTTService.Settings(model=stt_model),
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
