"""Phone calls answer to the key's budget like every call: a number whose key has spent
its budget hears a polite goodbye, a call Flow would place is refused with 402 before
Twilio is asked, and nothing is created or metered."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from supabase import AsyncClient

from flow.config import Settings
from flow.db import numbers as numbers_db
from flow.db import telephony as telephony_repo
from flow.db.client import call, rows_of
from tests.api.conftest import bearer
from tests.budgets.support import spend, with_budget
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.twilio_server import FakeTwilio
from tests.telephony.support import new_number, phone_settings, served_flow
from tests.telephony.twilio_phone import Twilio


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeOpenAI, FakeTwilio]]:
    openai = await FakeOpenAI(json_answer="{}").start()
    twilio = await FakeTwilio().start()
    yield openai, twilio
    await twilio.stop()
    await openai.stop()


async def _live_threads(sb: AsyncClient, api_key_id: str) -> list[dict[str, Any]]:
    res = await call(
        lambda: (
            sb.table("workflow_threads")
            .select("workflow_thread_id")
            .eq("api_key_id", api_key_id)
            .neq("status", "completed")
            .execute()
        )
    )
    return rows_of(res)


async def test_a_phone_call_for_a_key_over_its_budget_is_refused_and_creates_nothing(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    fakes: tuple[FakeOpenAI, FakeTwilio],
    tmp_path: Path,
) -> None:
    openai, twilio = fakes
    key_id = await with_budget(sb, api_key, limit_usd=Decimal("0.01"), period="day")
    await spend(sb, key_id, "0.02")  # a finished call spent more than the limit
    number = new_number()
    await numbers_db.add_number(sb, number, key_id, {"process_insights": False})
    s = phone_settings(settings, openai.base_url, twilio, tmp_path)
    async with served_flow(s) as (_app, url):
        phone = Twilio(url, twilio.auth_token, twilio.account_sid)
        call_sid, res = await phone.incoming_call(number, "+15550001234")
        assert res.status_code == 200, res.text
        assert "<Say>" in res.text and "<Hangup />" in res.text and "<Stream" not in res.text
        assert await telephony_repo.find_by_call_sid(sb, call_sid) is None

        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            join = {"transport": "twilio", "to": "+15557654321"}
            res = await client.post("/api/bot/join", json=join, headers=bearer(api_key))
            assert res.status_code == 402, res.text
            body = res.json()
            assert body["error"] == "budget_exhausted"
            assert Decimal(body["limit_usd"]) == Decimal("0.01")
    assert await _live_threads(sb, key_id) == []
    assert twilio.calls == []
