"""POST /api/bot/join with ``bot_config.mode``: a realtime call on an audio transport is
accepted; one that could not work (no caller audio, a text model, a voice the model
does not have) is refused at the join, before any thread exists."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from supabase import AsyncClient

from flow.db import threads as threads_repo
from flow.db.client import call, rows_of
from tests.api.recording_runner import RecordingRunner

DAILY = {"room_url": "https://example.daily.co/standup"}


async def test_a_realtime_call_on_an_audio_transport_is_accepted(
    client: httpx.AsyncClient, auth: dict[str, str], runner: RecordingRunner, sb: AsyncClient
) -> None:
    body = {**DAILY, "bot_config": {"mode": "realtime", "voice": "marin"}}
    res = await client.post("/api/bot/join", json=body, headers=auth)
    assert res.status_code == 202, res.text
    row = await threads_repo.get_thread(sb, res.json()["workflow_thread_id"])
    assert row is not None and row["bot_config"] == {"mode": "realtime", "voice": "marin"}
    [submitted] = runner.submitted
    assert submitted.bot_config.mode == "realtime"
    assert submitted.bot_config.llm_model is None  # FLOW_REALTIME_MODEL at run time


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (
            {"transport": "simulated", "script": ["hi"], "bot_config": {"mode": "realtime"}},
            "realtime mode needs a transport that carries the caller's voice",
        ),
        (
            {**DAILY, "bot_config": {"mode": "realtime", "llm_model": "gpt-4o-mini"}},
            "'gpt-4o-mini' is not a speech-to-speech model",
        ),
        (
            {**DAILY, "bot_config": {"llm_model": "gpt-realtime"}},
            "'gpt-realtime' is a speech-to-speech model: it needs mode 'realtime'",
        ),
        (
            {**DAILY, "bot_config": {"mode": "realtime", "voice": "aura-2-thalia-en"}},
            "voice 'aura-2-thalia-en' is not a realtime voice",
        ),
        ({**DAILY, "bot_config": {"mode": "speech"}}, "pipeline"),
    ],
)
async def test_a_realtime_call_that_could_not_work_is_refused_at_the_join(
    body: dict[str, Any],
    says: str,
    client: httpx.AsyncClient,
    auth: dict[str, str],
    api_key: dict[str, Any],
    runner: RecordingRunner,
    sb: AsyncClient,
) -> None:
    res = await client.post("/api/bot/join", json=body, headers=auth)
    assert res.status_code == 422, res.text
    answer = res.json()
    assert answer["error"] == "validation_error"
    assert says in answer["message"] + " ".join(d["msg"] for d in answer["details"])
    assert runner.submitted == []
    threads = await call(
        sb.table("workflow_threads").select("*").eq("api_key_id", api_key["id"]).execute
    )
    assert rows_of(threads) == []
