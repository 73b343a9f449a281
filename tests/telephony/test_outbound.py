"""Calls Flow places: ``POST /api/bot/join`` with ``"transport": "twilio"`` places the
call through the official SDK against a fake of Twilio's REST API; Twilio's status
callbacks move or end it; an answered call streams and meters its outbound leg."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from supabase import AsyncClient

from flow.config import Settings
from flow.db import telephony as telephony_repo
from flow.db import threads as threads_repo
from tests.api.conftest import bearer
from tests.bot.helpers import ledger
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.twilio_server import FakeTwilio
from tests.telephony.support import phone_settings, served_flow
from tests.telephony.twilio_phone import MediaStream, Twilio, stream_of

CALLEE = "+15557654321"
# What a Twilio answer (or anyone answering at TWILIO_API_BASE_URL) may say: never shown.
TWILIO_SECRET_TEXT = "upstream 10.0.0.5:8443 <script>alert(1)</script>"


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeOpenAI, FakeTwilio]]:
    openai = await FakeOpenAI(json_answer="{}").start()
    twilio = FakeTwilio(
        refuse={
            "+15550009999": (21211, "Invalid 'To' Phone Number"),
            "+15550008888": (20500, f"Internal Server Error {TWILIO_SECRET_TEXT}"),
        },
        refuse_status={"+15550008888": 503},
    )
    await twilio.start()
    yield openai, twilio
    await twilio.stop()
    await openai.stop()


def _settings(settings: Settings, fakes: tuple[FakeOpenAI, FakeTwilio], tmp: Path) -> Settings:
    openai, twilio = fakes
    return phone_settings(
        settings,
        openai.base_url,
        twilio,
        tmp,
        flow_telephony_hash_callers=True,
        flow_secret_key=SecretStr("telephony-tests-secret"),
    )


async def _status_of(client: httpx.AsyncClient, tid: str, key: dict[str, Any]) -> dict[str, Any]:
    res = await client.get(f"/api/bot/{tid}", headers=bearer(key))
    assert res.status_code == 200, res.text
    body: dict[str, Any] = res.json()
    return body


async def test_a_placed_call_rings_streams_and_meters_its_outbound_leg(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    fakes: tuple[FakeOpenAI, FakeTwilio],
    tmp_path: Path,
) -> None:
    _openai, twilio = fakes
    async with served_flow(_settings(settings, fakes, tmp_path)) as (app, url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            res = await client.post(
                "/api/bot/join",
                json={"transport": "twilio", "to": CALLEE, "process_insights": False},
                headers=bearer(api_key),
            )
            assert res.status_code == 202, res.text
            tid, sid = res.json()["workflow_thread_id"], res.json()["twilio_call_sid"]
            assert res.json()["status"] == "ringing"
            [placed] = twilio.calls
            assert (placed.sid, placed.to, placed.from_) == (sid, CALLEE, "+15550000000")
            assert placed.status_callback == f"{url}/api/telephony/twilio/status"
            assert placed.status_callback_events == [
                "initiated",
                "ringing",
                "answered",
                "completed",
            ]
            shown = await _status_of(client, tid, api_key)
            assert (shown["status"], shown["twilio_call_sid"]) == ("ringing", sid)

            side = Twilio(url, twilio.auth_token, twilio.account_sid)
            for status in ("initiated", "ringing", "in-progress"):
                assert (await side.status(sid, status)).status_code == 204
            stream_url, parameters = stream_of(placed.twiml)
            stream = MediaStream(stream_url, sid, twilio.account_sid)
            await stream.start(parameters)
            deadline = time.monotonic() + 10
            while (await _status_of(client, tid, api_key))["status"] != "running":
                assert time.monotonic() < deadline, "the call never ran"
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
            # Flow ends the call: it hangs up through Twilio's REST API, closes the socket.
            res = await client.post(f"/api/bot/{tid}/stop", headers=bearer(api_key))
            assert res.status_code == 202, res.text
            assert await stream.closed() is not None
            await asyncio.wait_for(app.state.runner.wait(tid), 30)
            assert (await side.status(sid, "completed")).status_code == 204
            shown = await _status_of(client, tid, api_key)

    assert shown["status"] == "completed", shown
    assert twilio.hangups == [sid]
    row = await threads_repo.get_thread(sb, tid)
    assert row is not None
    # The callee's number is kept only as a keyed hash.
    assert row["end_user_id"].startswith("caller_") and CALLEE[1:] not in row["end_user_id"]
    leg = await telephony_repo.get_call(sb, tid)
    assert leg is not None and leg["remote_party"] == row["end_user_id"]
    assert leg["twilio_status"] == "completed"
    [event] = await ledger(sb, tid)
    seconds = Decimal(event["audio_seconds_text"])
    assert (event["kind"], event["provider"], event["model"]) == ("telephony", "twilio", "outbound")
    assert 1.0 <= seconds < 5
    assert Decimal(str(event["cost_usd"])) == math.ceil(seconds / 60) * Decimal("0.014")
    assert Decimal(str(shown["usage_stats"]["telephony_seconds"])) == seconds
    assert Decimal(shown["usage_stats"]["total_cost_usd"]) == Decimal("0.014")


@pytest.mark.parametrize(
    ("twilio_status", "error_code"),
    [("busy", "busy"), ("no-answer", "no_answer"), ("failed", "call_failed")],
)
async def test_a_call_nobody_answers_ends_failed_and_meters_nothing(
    twilio_status: str,
    error_code: str,
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    fakes: tuple[FakeOpenAI, FakeTwilio],
    tmp_path: Path,
) -> None:
    _openai, twilio = fakes
    async with served_flow(_settings(settings, fakes, tmp_path)) as (app, url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            res = await client.post(
                "/api/bot/join", json={"transport": "twilio", "to": CALLEE}, headers=bearer(api_key)
            )
            assert res.status_code == 202, res.text
            tid, sid = res.json()["workflow_thread_id"], res.json()["twilio_call_sid"]
            side = Twilio(url, twilio.auth_token, twilio.account_sid)
            assert (await side.status(sid, "ringing")).status_code == 204
            for _ in range(2):  # a repeated callback changes nothing
                assert (await side.status(sid, twilio_status)).status_code == 204
            shown = await _status_of(client, tid, api_key)
            # Its token is spent: a stream that comes anyway is refused.
            stream = MediaStream(*_stream_of_call(twilio), twilio.account_sid)
            await stream.start(stream_of(twilio.calls[0].twiml)[1])
            assert await stream.closed() == 1008
            assert app.state.runner.active_calls == []
    assert shown["status"] == "failed"
    assert (shown["error"]["stage"], shown["error"]["code"]) == ("call", error_code)
    assert await ledger(sb, tid) == []
    assert not shown["usage_stats"]["events"]


def _stream_of_call(twilio: FakeTwilio) -> tuple[str, str]:
    return stream_of(twilio.calls[0].twiml)[0], twilio.calls[0].sid


async def test_a_ringing_call_stopped_is_canceled_and_meters_nothing(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    fakes: tuple[FakeOpenAI, FakeTwilio],
    tmp_path: Path,
) -> None:
    _openai, twilio = fakes
    async with served_flow(_settings(settings, fakes, tmp_path)) as (app, url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            res = await client.post(
                "/api/bot/join", json={"transport": "twilio", "to": CALLEE}, headers=bearer(api_key)
            )
            tid, sid = res.json()["workflow_thread_id"], res.json()["twilio_call_sid"]
            res = await client.post(f"/api/bot/{tid}/stop", headers=bearer(api_key))
            assert (res.status_code, res.json()["status"]) == (202, "failed"), res.text
            assert twilio.cancels == [sid]
            side = Twilio(url, twilio.auth_token, twilio.account_sid)
            assert (await side.status(sid, "canceled")).status_code == 204
            stream = MediaStream(*_stream_of_call(twilio), twilio.account_sid)
            await stream.start(stream_of(twilio.calls[0].twiml)[1])
            assert await stream.closed() == 1008
            shown = await _status_of(client, tid, api_key)
            res = await client.post(f"/api/bot/{tid}/stop", headers=bearer(api_key))
            assert (res.status_code, res.json()["error"]) == (409, "already_finished")
            assert app.state.runner.active_calls == []
    assert (shown["status"], shown["error"]["code"]) == ("failed", "canceled")
    assert await ledger(sb, tid) == []


async def test_a_call_twilio_refuses_or_cannot_place_is_answered_at_the_join(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    fakes: tuple[FakeOpenAI, FakeTwilio],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = _settings(settings, fakes, tmp_path)
    async with served_flow(s) as (_app, url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            join = {"transport": "twilio", "to": "+15550009999"}
            with caplog.at_level(logging.WARNING, logger="flow.telephony.twilio_api"):
                res = await client.post("/api/bot/join", json=join, headers=bearer(api_key))
            assert res.status_code == 400, res.text
            # Flow's words with Twilio's status and numeric code; Twilio's text is logged.
            assert res.json() == {
                "error": "call_not_placed",
                "message": "Twilio refused the call: Twilio answered HTTP 400 (Twilio error "
                "21211, https://www.twilio.com/docs/errors/21211)",
            }
            assert "Invalid 'To'" in caplog.text
            join = {"transport": "twilio", "to": "+15550008888"}
            with caplog.at_level(logging.WARNING, logger="flow.telephony.twilio_api"):
                res = await client.post("/api/bot/join", json=join, headers=bearer(api_key))
            assert res.status_code == 503, res.text
            assert res.json()["error"] == "telephony_unavailable"
            assert res.headers["Retry-After"]
            assert "HTTP 503 (Twilio error 20500" in res.json()["message"]
            assert TWILIO_SECRET_TEXT not in res.text and "10.0.0.5" not in res.text
            assert TWILIO_SECRET_TEXT in caplog.text
            for bad in ("5557654321", "+0123", "+1555765432199999", "tel:+15557654321"):
                join = {"transport": "twilio", "to": bad}
                res = await client.post("/api/bot/join", json=join, headers=bearer(api_key))
                assert res.status_code == 422, bad
            join = {"transport": "webrtc", "to": CALLEE}
            res = await client.post("/api/bot/join", json=join, headers=bearer(api_key))
            assert res.status_code == 422
    # The refused call's thread says why; nothing else was created.
    res_rows = (
        await sb.table("workflow_threads").select("*").eq("api_key_id", api_key["id"]).execute()
    )
    assert len(res_rows.data) == 2
    for row in res_rows.data:
        assert (row["status"], row["error_stage"], row["error_code"]) == (
            "failed",
            "join",
            "call_failed",
        )
        assert row["error_message"].startswith("Twilio answered HTTP ")
        assert "Invalid" not in row["error_message"] and "10.0.0.5" not in row["error_message"]

    unconfigured = s.model_copy(update={"twilio_account_sid": ""})
    async with served_flow(unconfigured) as (_app, url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            join = {"transport": "twilio", "to": CALLEE}
            res = await client.post("/api/bot/join", json=join, headers=bearer(api_key))
            assert res.status_code == 400
            assert res.json()["error"] == "transport_not_allowed"
            assert "TWILIO_ACCOUNT_SID" in res.json()["message"]
