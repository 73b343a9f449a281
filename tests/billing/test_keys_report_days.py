"""The operator's all-keys report keeps the closed days of a range and stays exact.

``usage_keys_report`` sums the closed UTC days of a range once and, for later reports
over the same days, adds only what lies outside them. These tests hold it to the
reference (``usage_key_figures`` and ``usage_cost_by_kind``, which read the rollups and
the ledger afresh) and to its own answer with nothing kept, over ranges with partial
hours of every shape; then write into kept days (a late event, a repricing, a call
still running) and check that what was kept is forgotten; and hold a write open while a
report runs, which must then keep nothing.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from supabase import AsyncClient

from flow import localstack
from flow.billing.reports import CONSOLE_DAYS, ConsoleSpan
from flow.billing.reprice import reprice
from flow.db import keys as keys_repo
from flow.db import reports
from flow.db import threads as threads_repo
from flow.db.client import DatabaseError, call, rows_of, rpc_body
from flow.db.usage import record_usage_events
from flow.localstack.migrations import PG_BIN
from flow.metering.events import UsageEvent, UsageKind
from tests.billing.test_reprice import BOOK
from tests.integration.test_ledger import llm_event, stt_event, telephony_event, tts_event

# Far from the days other tests write on.
ANCHOR = datetime(2025, 6, 2, tzinfo=UTC)
TEXT_NUMBERS = ("stt_seconds", "telephony_seconds", "cost_usd", "call_seconds")
COUNTS = (
    "calls",
    "end_users",
    "events",
    "llm_calls",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "tts_characters",
    "unpriced_events",
    "error_events",
)


async def new_key(sb: AsyncClient) -> str:
    row, _ = await keys_repo.create_local_key(sb, f"days-{uuid.uuid4().hex[:6]}")
    return str(row["id"])


async def a_call(
    sb: AsyncClient,
    key_id: str,
    at: datetime,
    *,
    user: str | None,
    ended: bool = True,
    minutes: int = 3,
) -> dict[str, Any]:
    """A call at ``at`` with an event of every kind, spread over ``minutes``."""
    thread = await threads_repo.create_thread(
        sb,
        api_key_id=key_id,
        transport="simulated",
        end_user_id=user,
        bot_started_at=at.isoformat(),
        bot_ended_at=(at + timedelta(minutes=minutes)).isoformat() if ended else None,
    )
    step = timedelta(minutes=minutes) / 4
    await record_usage_events(
        sb,
        [
            llm_event(thread, occurred_at=at, end_user_id=user),
            tts_event(thread, 120).model_copy(update={"occurred_at": at + step}),
            stt_event(thread, "4.250").model_copy(update={"occurred_at": at + 2 * step}),
            telephony_event(thread, "61.000").model_copy(update={"occurred_at": at + 3 * step}),
        ],
    )
    return thread


async def seed(sb: AsyncClient, rnd: random.Random, days: int = 6) -> list[str]:
    """Three keys with calls over ``days`` days from ANCHOR (end users shared by days)."""
    keys = [await new_key(sb) for _ in range(3)]
    for day in range(days):
        for n, key_id in enumerate(keys):
            for _ in range(rnd.randint(0, 3)):
                at = ANCHOR + timedelta(days=day, minutes=rnd.randint(0, 24 * 60 - 5))
                user = rnd.choice([None, f"u{n}-a", f"u{n}-b", f"u{n}-{day}"])
                await a_call(sb, key_id, at, user=user)
    return keys


async def all_keys(
    sb: AsyncClient, start: datetime, end: datetime, *, use_cache: bool
) -> dict[str, dict[str, Any]]:
    body = json.loads(await reports.keys_report_body(sb, start, end, use_cache=use_cache))
    return {k["api_key_id"]: figures(k, k["cost_by_kind"]) for k in body["keys"]}


async def reference(
    sb: AsyncClient, keys: list[str], start: datetime, end: datetime
) -> dict[str, dict[str, Any]]:
    kinds: dict[str, dict[str, str]] = {k: {} for k in keys}
    for row in await reports.cost_by_kind(sb, keys, start, end):
        kinds[str(row["api_key_id"])][row["kind"]] = row["cost_usd"]
    got = {k: figures({}, {}) for k in keys}
    for row in await reports.key_figures(sb, keys, start, end):
        got[str(row["api_key_id"])] = figures(row, kinds[str(row["api_key_id"])])
    return got


def figures(row: dict[str, Any], by_kind: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {name: int(row.get(name) or 0) for name in COUNTS}
    for name in TEXT_NUMBERS:
        value = Decimal(str(row.get(name) or 0))
        out[name] = value.quantize(Decimal("0.001")) if name == "call_seconds" else value
    out["cost_by_kind"] = {kind: Decimal(v) for kind, v in by_kind.items()}
    return out


async def kept_spans(sb: AsyncClient) -> set[tuple[str, str]]:
    rows = rows_of(await call(sb.table("usage_report_cache").select("day_start,day_end").execute))
    return {(r["day_start"], r["day_end"]) for r in rows}


def span(start: datetime, end: datetime) -> tuple[str, str]:
    """The closed days a report over [start, end) keeps."""
    first = start.date() + timedelta(days=0 if start.time() == datetime.min.time() else 1)
    return first.isoformat(), end.date().isoformat()


async def assert_exact(sb: AsyncClient, keys: list[str], start: datetime, end: datetime) -> None:
    want = await reference(sb, keys, start, end)
    kept = await all_keys(sb, start, end, use_cache=True)
    live = await all_keys(sb, start, end, use_cache=False)
    for key_id in keys:
        assert kept[key_id] == want[key_id], (start, end, key_id)
        assert live[key_id] == want[key_id], (start, end, key_id)


@pytest.mark.timeout(120)
async def test_kept_days_answer_as_the_ledger_does_over_ranges_of_every_shape(
    sb: AsyncClient,
) -> None:
    rnd = random.Random(11)
    keys = await seed(sb, rnd)
    minute = timedelta(minutes=1)
    # Calls in the parts of partial hours outside the ranges below, and calls across
    # their edges (events on both sides).
    last = ANCHOR + timedelta(days=5)
    for at, user in (
        (ANCHOR + 5 * minute, "edge-a"),
        (ANCHOR + 8 * minute, "edge-b"),
        (ANCHOR + 49 * minute, "edge-a"),
        (last + 8 * minute, None),
        (last + 48 * minute, "edge-c"),
        (last + 53 * minute, "edge-d"),
    ):
        await a_call(sb, keys[0], at, user=user)
    ranges = [
        (ANCHOR, ANCHOR + timedelta(days=6)),  # whole days only
        # Partial hours over half an hour: read as their hour less what lies outside.
        (ANCHOR + 10 * minute, last + 50 * minute),
        (ANCHOR + 10 * minute, ANCHOR + timedelta(days=2)),
        (ANCHOR + timedelta(days=1), last + 50 * minute),
        (ANCHOR + 50 * minute, last + 10 * minute),  # shorter ones: read from the ledger
        (ANCHOR + 5 * minute, ANCHOR + timedelta(hours=20)),  # no closed day
        (ANCHOR + timedelta(hours=3, minutes=40), ANCHOR + timedelta(hours=3, minutes=55)),
    ]
    for _ in range(6):
        a = ANCHOR + timedelta(minutes=rnd.randint(0, 6 * 24 * 60))
        b = ANCHOR + timedelta(minutes=rnd.randint(0, 6 * 24 * 60))
        if a != b:
            ranges.append((min(a, b), max(a, b)))
    for start, end in ranges:
        await assert_exact(sb, keys, start, end)
    # The same range again reads what the first report kept.
    start, end = ranges[1]
    assert span(start, end) in await kept_spans(sb)
    await assert_exact(sb, keys, start, end)


@pytest.mark.timeout(120)
async def test_a_write_into_kept_days_forgets_them(sb: AsyncClient) -> None:
    keys = await seed(sb, random.Random(12), days=4)
    start, end = ANCHOR + timedelta(minutes=45), ANCHOR + timedelta(days=3, minutes=40)
    await assert_exact(sb, keys, start, end)
    assert span(start, end) in await kept_spans(sb)

    # A late event on a kept day (a spool replayed, say): a new call of a new end user.
    await a_call(sb, keys[0], ANCHOR + timedelta(days=1, hours=5), user="late-comer")
    assert span(start, end) not in await kept_spans(sb)
    await assert_exact(sb, keys, start, end)
    assert span(start, end) in await kept_spans(sb)

    # Repricing an event recorded unpriced on a kept day.
    thread = await threads_repo.create_thread(
        sb, api_key_id=keys[1], transport="simulated", end_user_id="u1-a"
    )
    unknown = UsageEvent(
        workflow_thread_id=thread["workflow_thread_id"],
        api_key_id=keys[1],
        end_user_id="u1-a",
        occurred_at=ANCHOR + timedelta(days=2, hours=7),
        kind=UsageKind.LLM,
        provider="openai",
        model="mystery-model",
        input_tokens=2000,
        output_tokens=300,
    )
    await record_usage_events(sb, [unknown])
    before = (await all_keys(sb, start, end, use_cache=True))[keys[1]]
    assert before["unpriced_events"] == 1
    done = await reprice(sb, BOOK, key_ids=[keys[1]], apply=True)
    assert done.recorded == 1
    after = (await all_keys(sb, start, end, use_cache=True))[keys[1]]
    assert after["unpriced_events"] == 0
    assert after["cost_usd"] - before["cost_usd"] == done.recorded_cost_usd > 0
    await assert_exact(sb, keys, start, end)


@pytest.mark.timeout(120)
async def test_a_call_still_running_on_a_kept_day_is_timed_live(sb: AsyncClient) -> None:
    key_id = await new_key(sb)
    at = ANCHOR + timedelta(days=1, hours=2)
    thread = await a_call(sb, key_id, at, user="night-owl", ended=False)
    start, end = ANCHOR, ANCHOR + timedelta(days=3)
    first = (await all_keys(sb, start, end, use_cache=True))[key_id]
    await asyncio.sleep(1.1)
    second = (await all_keys(sb, start, end, use_cache=True))[key_id]
    assert span(start, end) in await kept_spans(sb)
    assert second["call_seconds"] - first["call_seconds"] >= 1
    ended_at = at + timedelta(minutes=42)
    await threads_repo.update_thread(
        sb, thread["workflow_thread_id"], bot_ended_at=ended_at.isoformat()
    )
    done = (await all_keys(sb, start, end, use_cache=True))[key_id]
    assert done["call_seconds"] == Decimal(42 * 60) and done["calls"] == 1


@pytest.mark.timeout(120)
async def test_a_report_keeps_nothing_of_a_day_being_written(
    sb: AsyncClient, stack: localstack.StackInfo
) -> None:
    keys = await seed(sb, random.Random(13), days=3)
    day = date(2025, 6, 3)
    start, end = ANCHOR, ANCHOR + timedelta(days=3)
    thread = await threads_repo.create_thread(
        sb, api_key_id=keys[2], transport="simulated", end_user_id="u2-a"
    )
    # A writer inside its transaction: its row is on a day of the range, not committed.
    writer = await asyncio.create_subprocess_exec(
        str(PG_BIN / "psql"),
        stack.database_url,
        "-X",
        "-v",
        "ON_ERROR_STOP=1",
        "-qAt",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert writer.stdin is not None and writer.stdout is not None
    try:
        writer.stdin.write(
            (
                "begin;\n"
                "insert into usage_events (id, workflow_thread_id, api_key_id, end_user_id,"
                " occurred_at, kind, category, provider, model, characters, cost_usd) values"
                f" ('{uuid.uuid4()}', '{thread['workflow_thread_id']}', '{keys[2]}', 'u2-a',"
                f" '{day.isoformat()}T09:00:00Z', 'tts', 'bot', 'openai', 'tts-1', 1000,"
                " 0.015);\n"
                "select 'written';\n"
            ).encode()
        )
        await writer.stdin.drain()
        line = await asyncio.wait_for(writer.stdout.readline(), 20)
        assert line.strip() == b"written"

        unseen = (await all_keys(sb, start, end, use_cache=True))[keys[2]]
        assert span(start, end) not in await kept_spans(sb)

        writer.stdin.write(b"commit;\n")
        await writer.stdin.drain()
        writer.stdin.close()
        assert await asyncio.wait_for(writer.wait(), 20) == 0
    finally:
        if writer.returncode is None:
            writer.kill()
            await writer.wait()
    seen = (await all_keys(sb, start, end, use_cache=True))[keys[2]]
    assert seen["tts_characters"] == unseen["tts_characters"] + 1000
    assert seen["cost_usd"] == unseen["cost_usd"] + Decimal("0.015")
    assert span(start, end) in await kept_spans(sb)
    await assert_exact(sb, keys, start, end)


@pytest.mark.timeout(120)
async def test_a_range_to_now_reads_the_current_hour_less_what_comes_after(
    sb: AsyncClient,
) -> None:
    key_id = await new_key(sb)
    now = datetime.now(UTC)
    await a_call(sb, key_id, now - timedelta(days=1, hours=2), user="yesterday")
    await a_call(sb, key_id, now - timedelta(minutes=2), user="today", minutes=1)
    # An instance whose clock runs ahead records an event after the range's end.
    await a_call(sb, key_id, now + timedelta(seconds=30), user="ahead", minutes=1)
    end = now + timedelta(seconds=5)  # the current hour, read by subtraction
    for start in (now - timedelta(days=3), now - timedelta(minutes=40), now - timedelta(hours=2)):
        await assert_exact(sb, [key_id], start, end)
    got = (await all_keys(sb, now - timedelta(days=3), end, use_cache=True))[key_id]
    assert got["calls"] == 2 and got["end_users"] == 2


async def test_a_range_the_database_refuses_is_its_error_not_a_document(sb: AsyncClient) -> None:
    with pytest.raises(DatabaseError) as refused:
        await rpc_body(
            sb, "usage_keys_report", {"p_start": ANCHOR.isoformat(), "p_end": ANCHOR.isoformat()}
        )
    assert refused.value.code == "22023" and "start must be before end" in refused.value.message


async def test_the_consoles_period_is_kept_by_the_first_round_of_each_day(
    sb: AsyncClient,
) -> None:
    console = ConsoleSpan(sb)
    assert await console.keep()
    now = datetime.now(UTC)
    assert span(now - timedelta(days=CONSOLE_DAYS), now) in await kept_spans(sb)
    assert console.kept_on == now.date()
    assert not await console.keep()  # once a day
    console.kept_on = now.date() - timedelta(days=1)  # the next day's first round
    assert await console.keep()
