"""A speech-to-speech call its budget ends says the goodbye itself, and it is billed.

The realtime model has no TTS in front of it, so the call's last words are a response
of its own: turn detection off first (the caller can neither talk over the words nor
start another answer), then a short response outside the conversation that says
exactly ``FLOW_BUDGET_GOODBYE``. Its usage is billed like any response, and the room
kept for it was reserved before the call reached its limit.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from supabase import AsyncClient

from flow.bot.budget_guard import realtime_last_words_tokens
from flow.bot.contract import BotConfig, CallBudget, CallRequest
from flow.bot.runner import create_runner
from flow.config import Settings
from flow.db import threads as threads_repo
from tests.bot.test_realtime_call import (
    CALLER,
    REPLIES,
    SCRIPT,
    ledger,
    llm_id,
    realtime_settings,
    response_bill,
)
from tests.fakes.openai_realtime_server import FakeRealtime

LIMIT = Decimal("0.03")  # the greeting and one answer fit; a second answer would not


async def test_a_realtime_call_over_its_budget_says_the_goodbye_and_bills_it(
    settings: Settings, sb: AsyncClient, thread: dict[str, Any], tmp_path: Path
) -> None:
    realtime = await FakeRealtime(replies=list(REPLIES), transcripts=list(SCRIPT)).start()
    try:
        s = realtime_settings(
            settings, openai_realtime_base_url=realtime.url, flow_spool_dir=tmp_path
        )
        runner = create_runner(s, sb, simulated=CALLER)
        tid = str(thread["workflow_thread_id"])
        await runner.submit(
            CallRequest(
                workflow_thread_id=tid,
                api_key_id=str(thread["api_key_id"]),
                transport="simulated",
                bot_config=BotConfig(mode="realtime", greeting=REPLIES[0]),
                script=SCRIPT,
                budget=CallBudget(key_limited=False, max_cost_usd=LIMIT),
            )
        )
        await runner.wait(tid)
        await runner.shutdown()
    finally:
        await realtime.stop()

    row = await threads_repo.get_thread(sb, tid)
    assert row is not None and row["end_reason"] == "budget_exhausted", row
    *answers, goodbye = realtime.responses
    assert [r.out_of_band for r in answers] == [False] * len(answers)
    assert goodbye.out_of_band and goodbye.status == "completed"
    assert goodbye.reply == s.flow_budget_goodbye
    assert goodbye.instructions is not None and goodbye.instructions.endswith(goodbye.reply)
    # Turn detection was off before the words: nobody could talk over them.
    assert realtime.sessions[-1]["audio"]["input"]["turn_detection"] is None
    # The words are billed as OpenAI bills that response.
    rows = {r["id"]: r for r in await ledger(sb, tid)}
    said = rows[llm_id(tid, goodbye.id)]
    assert goodbye.usage is not None and said["cost_usd"] == sum(response_bill(goodbye.usage))
    assert {llm_id(tid, r.id) for r in answers} <= set(rows)
    # The transcript ends with them.
    assistant = [t for t in row["transcript"] if t["role"] == "assistant"]
    assert assistant and assistant[-1]["content"] == goodbye.reply


def test_the_room_kept_for_the_words_grows_with_them() -> None:
    short, longer = realtime_last_words_tokens("Bye."), realtime_last_words_tokens("Bye " * 20)
    assert all(a < b for a, b in zip(short, longer, strict=True))
    tokens_in, tokens_out, audio_out = longer
    assert audio_out < tokens_out and tokens_in > 0
