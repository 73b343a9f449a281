"""Shared pieces for the voice-bot tests: a runner wired to the local OpenAI server and
fake voice services, and ledger read-backs."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from supabase import AsyncClient

from flow.bot.contract import BotConfig, CallRequest, CallResult
from flow.bot.runner import BotRunner, create_runner
from flow.bot.services import CallServices, llm_model_for, openai_llm, system_prompt_for
from flow.bot.simulated import SimulatedParams
from flow.config import Settings
from flow.db.client import call, rows_of
from tests.fakes.voice import FakeSTT, FakeTTS

CALLER_AUDIO_SECONDS = 0.5


class FakeVoices:
    """A services factory: the real OpenAI LLM, fake STT/TTS (kept for inspection)."""

    def __init__(self) -> None:
        self.stts: list[FakeSTT] = []
        self.ttss: list[FakeTTS] = []

    def __call__(self, settings: Settings, request: CallRequest) -> CallServices:
        stt, tts = FakeSTT(), FakeTTS()
        self.stts.append(stt)
        self.ttss.append(tts)
        return CallServices(
            llm=openai_llm(settings, request),
            tts=tts,
            stt=stt,
            providers={"llm": "openai", "tts": "openai", "stt": "deepgram"},
            models={"llm": llm_model_for(settings, request)},
            system_instruction=system_prompt_for(settings, request),
        )

    @property
    def characters(self) -> int:
        return sum(sum(t.reported_characters) for t in self.ttss)

    @property
    def seconds(self) -> Decimal:
        return sum((Decimal(repr(s)) for t in self.stts for s in t.reported_seconds), Decimal(0))


def bot_settings(settings: Settings, base_url: str, spool_dir: Path, **kw: Any) -> Settings:
    return settings.model_copy(
        update={
            "openai_api_key": SecretStr("test"),
            "openai_base_url": base_url,
            "flow_spool_dir": spool_dir,
            "flow_meter_flush_seconds": 0.2,
            **kw,
        }
    )


def make_runner(
    settings: Settings,
    sb: AsyncClient,
    voices: FakeVoices,
    *,
    patience: float | None = None,
    results: list[tuple[CallRequest, CallResult, str]] | None = None,
) -> BotRunner:
    async def post_call(request: CallRequest, result: CallResult) -> None:
        if results is not None:
            from flow.db import threads as threads_repo

            row = await threads_repo.get_thread(sb, request.workflow_thread_id)
            results.append((request, result, row["status"] if row else "?"))

    return create_runner(
        settings,
        sb,
        post_call=post_call,
        services_factory=voices,
        simulated=SimulatedParams(
            caller_audio_seconds=CALLER_AUDIO_SECONDS, reply_patience_seconds=patience
        ),
    )


def request_for(thread: dict[str, Any], script: list[str]) -> CallRequest:
    return CallRequest(
        workflow_thread_id=str(thread["workflow_thread_id"]),
        api_key_id=str(thread["api_key_id"]),
        transport="simulated",
        bot_config=BotConfig(),
        script=script,
        end_user_id="end-user-1",
    )


async def ledger(sb: AsyncClient, thread_id: str) -> list[dict[str, Any]]:
    res = await call(
        lambda: (
            sb.table("usage_events")
            .select("*,audio_seconds_text:audio_seconds::text")
            .eq("workflow_thread_id", thread_id)
            .execute()
        )
    )
    return rows_of(res)
