"""What Flow refuses from the telephone side: a webhook Twilio did not sign, a number it
does not answer, a Media Stream whose token is spent, expired or another call's. Each
is refused, creates or runs nothing, and meters nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from supabase import AsyncClient

from flow.config import Settings
from flow.db import keys as keys_repo
from flow.db import numbers as numbers_db
from flow.db import telephony as telephony_repo
from flow.db import threads as threads_repo
from flow.db.client import call, rows_of
from tests.bot.helpers import ledger
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.twilio_server import FakeTwilio
from tests.telephony.support import new_number, phone_settings, served_flow
from tests.telephony.twilio_phone import MediaStream, Twilio, stream_of

POLICY_VIOLATION = 1008


@pytest.fixture
async def phone(
    settings: Settings, sb: AsyncClient, api_key: dict[str, Any], tmp_path: Path
) -> AsyncIterator[tuple[FastAPI, Twilio, str]]:
    """The app, Twilio calling it, and a number it answers (routed to ``api_key``)."""
    openai = await FakeOpenAI(json_answer="{}").start()
    twilio = await FakeTwilio().start()
    number = new_number()
    await numbers_db.add_number(sb, number, api_key["id"], {"process_insights": False})
    s = phone_settings(settings, openai.base_url, twilio, tmp_path)
    async with served_flow(s) as (app, url):
        yield app, Twilio(url, twilio.auth_token, twilio.account_sid), number
    await twilio.stop()
    await openai.stop()


async def _threads_of(sb: AsyncClient, api_key_id: str) -> list[dict[str, Any]]:
    res = await call(
        lambda: sb.table("workflow_threads").select("*").eq("api_key_id", api_key_id).execute()
    )
    return rows_of(res)


@pytest.mark.parametrize("signature", ["", "bm90IGEgc2lnbmF0dXJl"])
async def test_a_webhook_twilio_did_not_sign_is_403_and_creates_nothing(
    signature: str,
    sb: AsyncClient,
    api_key: dict[str, Any],
    phone: tuple[FastAPI, Twilio, str],
) -> None:
    _app, twilio, number = phone
    call_sid, res = await twilio.incoming_call(number, "+15550001234", signature=signature)
    assert res.status_code == 403, res.text
    assert res.json()["error"] == "invalid_signature"
    assert await _threads_of(sb, api_key["id"]) == []
    assert await telephony_repo.find_by_call_sid(sb, call_sid) is None
    # A signature over other parameters does not fit these.
    _, res = await twilio.incoming_call(
        number, "+15550001234", signature=twilio_signature_of_other_params(twilio)
    )
    assert res.status_code == 403


def twilio_signature_of_other_params(twilio: Twilio) -> str:
    from twilio.request_validator import RequestValidator

    url = twilio.flow_url + "/api/telephony/twilio/voice"
    return RequestValidator(twilio.auth_token).compute_signature(url, {"To": "+1"})


async def test_a_number_flow_does_not_answer_hears_a_polite_goodbye(
    sb: AsyncClient, api_key: dict[str, Any], phone: tuple[FastAPI, Twilio, str]
) -> None:
    _app, twilio, _number = phone
    # Not routed, or routed to a key since revoked.
    revoked, _ = await keys_repo.create_local_key(sb, "revoked telephony key")
    number_of_revoked = new_number()
    await numbers_db.add_number(sb, number_of_revoked, revoked["id"], {})
    await keys_repo.revoke_key(sb, revoked["id"])
    for number in (new_number(), number_of_revoked):
        call_sid, res = await twilio.incoming_call(number, "+15550001234")
        assert res.status_code == 200
        assert res.headers["content-type"].startswith("application/xml")
        assert "<Say>" in res.text and "<Hangup />" in res.text and "<Stream" not in res.text
        assert await telephony_repo.find_by_call_sid(sb, call_sid) is None
    assert await _threads_of(sb, api_key["id"]) == []
    assert await _threads_of(sb, revoked["id"]) == []


async def _answered(twilio: Twilio, number: str) -> tuple[str, str, dict[str, str]]:
    call_sid, res = await twilio.incoming_call(number, "+15550001234")
    assert res.status_code == 200, res.text
    url, parameters = stream_of(res.text)
    return call_sid, url, parameters


async def _refused(stream: MediaStream, parameters: dict[str, str], **kw: Any) -> None:
    await stream.start(parameters, **kw)
    assert await stream.closed() == POLICY_VIOLATION
    assert stream.heard_seconds == 0


async def test_a_spent_expired_or_foreign_stream_token_is_refused_and_runs_nothing(
    sb: AsyncClient, api_key: dict[str, Any], phone: tuple[FastAPI, Twilio, str]
) -> None:
    app, twilio, number = phone
    runner = app.state.runner

    # Another call's token: refused, and left for its own call.
    first_sid, url, first_params = await _answered(twilio, number)
    other_sid, _, other_params = await _answered(twilio, number)
    await _refused(MediaStream(url, other_sid, twilio.account_sid), first_params)
    first = await telephony_repo.find_by_call_sid(sb, first_sid)
    assert first is not None and first["token_spent_at"] is None

    # Spent: the call streams once (and hangs up at once), then the token is worthless.
    stream = MediaStream(url, first_sid, twilio.account_sid)
    await stream.start(first_params)
    await stream.stop()
    await runner.wait(first["workflow_thread_id"])
    await _refused(MediaStream(url, first_sid, twilio.account_sid), first_params)
    [leg] = await ledger(sb, first["workflow_thread_id"])
    assert leg["kind"] == "telephony"

    # Expired: issued longer ago than FLOW_TELEPHONY_STREAM_TOKEN_SECONDS.
    other = await telephony_repo.find_by_call_sid(sb, other_sid)
    assert other is not None
    await call(
        lambda: (
            sb.table("telephony_calls")
            .update({"created_at": "2020-01-01T00:00:00Z"})
            .eq("call_sid", other_sid)
            .execute()
        )
    )
    await _refused(MediaStream(url, other_sid, twilio.account_sid), other_params)

    # A stream without a token, or that does not start with "start".
    await _refused(MediaStream(url, other_sid, twilio.account_sid), {})

    assert runner.active_calls == []
    thread = await threads_repo.get_thread(sb, other["workflow_thread_id"])
    assert thread is not None and thread["status"] == "pending"
    assert await ledger(sb, other["workflow_thread_id"]) == []
    assert len(await _threads_of(sb, api_key["id"])) == 2
