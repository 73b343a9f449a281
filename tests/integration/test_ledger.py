"""The exactly-once ledger against the real stack (Postgres + PostgREST + supabase-py)."""

from __future__ import annotations

import asyncio
import random
import uuid
from decimal import Decimal
from typing import Any

import pytest
from supabase import AsyncClient, acreate_client

from flow import localstack
from flow.db import threads as threads_repo
from flow.db.client import DatabaseError, call, rows_of
from flow.db.usage import record_usage_events
from flow.metering.events import UsageEvent, UsageKind
from flow.metering.pricing import PriceBook, cost_fields

BOOK = PriceBook()


def llm_event(thread: dict[str, Any], model: str = "gpt-4o-mini", **kw: Any) -> UsageEvent:
    input_tokens = kw.pop("input_tokens", random.randint(50, 5000))
    output_tokens = kw.pop("output_tokens", random.randint(1, 500))
    cached = kw.pop("cache_read_tokens", random.randint(0, input_tokens))
    price = BOOK.llm(
        "openai",
        model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cached,
    )
    return UsageEvent(
        workflow_thread_id=thread["workflow_thread_id"],
        api_key_id=thread["api_key_id"],
        kind=UsageKind.LLM,
        provider="openai",
        model=model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cached,
        **cost_fields(price),
        **kw,
    )


def realtime_event(thread: dict[str, Any], rnd: random.Random | None = None) -> UsageEvent:
    """A speech-to-speech inference (gpt-realtime): audio and text, cached and not, with
    every part inside its total, as OpenAI's Realtime API reports them."""
    rnd = rnd or random.Random()
    audio_in, text_in = rnd.randint(1, 20_000), rnd.randint(0, 3_000)
    cached_audio, cached_text = rnd.randint(0, audio_in), rnd.randint(0, text_in)
    audio_out, text_out = rnd.randint(0, 4_000), rnd.randint(0, 600)
    counts = {
        "input_tokens": audio_in + text_in,
        "cache_read_tokens": cached_audio + cached_text,
        "input_audio_tokens": audio_in,
        "cache_read_audio_tokens": cached_audio,
        "output_tokens": audio_out + text_out,
        "output_audio_tokens": audio_out,
    }
    price = BOOK.llm("openai", "gpt-realtime", **counts)
    assert price is not None
    return UsageEvent(
        workflow_thread_id=thread["workflow_thread_id"],
        api_key_id=thread["api_key_id"],
        kind=UsageKind.LLM,
        provider="openai",
        model="gpt-realtime",
        **counts,
        **cost_fields(price),
    )


def tts_event(thread: dict[str, Any], characters: int) -> UsageEvent:
    return UsageEvent(
        workflow_thread_id=thread["workflow_thread_id"],
        api_key_id=thread["api_key_id"],
        kind=UsageKind.TTS,
        provider="openai",
        model="tts-1",
        characters=characters,
        **cost_fields(BOOK.tts("openai", "tts-1", characters)),
    )


def stt_event(thread: dict[str, Any], seconds: str) -> UsageEvent:
    return UsageEvent(
        workflow_thread_id=thread["workflow_thread_id"],
        api_key_id=thread["api_key_id"],
        kind=UsageKind.STT,
        provider="deepgram",
        model="nova-3",
        audio_seconds=Decimal(seconds),
        **cost_fields(BOOK.stt("deepgram", "nova-3", Decimal(seconds))),
    )


def telephony_event(thread: dict[str, Any], seconds: str, direction: str = "inbound") -> UsageEvent:
    """A phone call leg, priced per started minute as the stream prices it."""
    return UsageEvent(
        workflow_thread_id=thread["workflow_thread_id"],
        api_key_id=thread["api_key_id"],
        kind=UsageKind.TELEPHONY,
        provider="twilio",
        model=direction,
        audio_seconds=Decimal(seconds),
        **cost_fields(BOOK.telephony("twilio", direction, Decimal(seconds))),
    )


async def ledger_rows(sb: AsyncClient, thread_id: str) -> list[dict[str, Any]]:
    res = await call(
        sb.table("usage_events")
        .select("id,input_tokens,output_tokens,characters,audio_seconds::text,cost_usd::text")
        .eq("workflow_thread_id", thread_id)
        .execute
    )
    return rows_of(res)


def expected_stats(events: list[UsageEvent]) -> dict[str, Any]:
    distinct = {e.id: e for e in events}.values()
    priced = [e.cost_usd for e in distinct if e.cost_usd is not None]
    return {
        "events": len(distinct),
        "llm_calls": sum(1 for e in distinct if e.kind == UsageKind.LLM),
        "input_tokens": sum(e.input_tokens for e in distinct),
        "output_tokens": sum(e.output_tokens for e in distinct),
        "total_tokens": sum(e.total_tokens for e in distinct),
        "cache_read_tokens": sum(e.cache_read_tokens for e in distinct),
        "input_audio_tokens": sum(e.input_audio_tokens for e in distinct),
        "output_audio_tokens": sum(e.output_audio_tokens for e in distinct),
        "cache_read_audio_tokens": sum(e.cache_read_audio_tokens for e in distinct),
        "tts_characters": sum(e.characters for e in distinct if e.kind == UsageKind.TTS),
        "total_cost_usd": sum(priced, Decimal(0)),
        "unpriced_events": sum(1 for e in distinct if e.cost_usd is None),
    }


async def assert_stats_match(sb: AsyncClient, thread: dict[str, Any], events: list[UsageEvent]):
    want = expected_stats(events)
    got = await threads_repo.get_thread(sb, thread["workflow_thread_id"])
    assert got is not None
    stats = got["usage_stats"]
    for key, value in want.items():
        assert Decimal(str(stats.get(key, 0))) == Decimal(value), key
    rows = await ledger_rows(sb, thread["workflow_thread_id"])
    assert len(rows) == want["events"]
    assert sum(Decimal(r["cost_usd"] or 0) for r in rows) == want["total_cost_usd"]
    assert sum(r["input_tokens"] for r in rows) == want["input_tokens"]


def test_migrations_apply_cleanly_in_order_to_an_empty_database(
    stack: localstack.StackInfo,
) -> None:
    name = f"empty_{uuid.uuid4().hex[:8]}"
    localstack.psql(stack, "-c", f"create database {name}")
    url = stack.database_url.rsplit("/", 1)[0] + f"/{name}"
    applied = localstack.apply_migrations(url, quiet=True)
    files = sorted(p.name for p in (localstack.project_root() / "supabase/migrations").glob("*"))
    assert applied == files
    tables = localstack.psql(
        url, "-At", "-c", "select tablename from pg_tables where schemaname='public' order by 1"
    ).split()
    assert {"api_keys", "workflow_threads", "usage_events", "analytics_integrations"} <= set(tables)
    rls = localstack.psql(
        url,
        "-At",
        "-c",
        "select count(*) from pg_tables where schemaname='public' and not rowsecurity",
    )
    assert rls.strip() == "0", "every public table has RLS enabled"
    assert localstack.apply_migrations(url, quiet=True) == [], "re-running applies nothing"
    localstack.psql(stack, "-c", f"drop database {name}")


async def test_a_batch_recorded_twice_is_counted_once(sb: AsyncClient, thread: dict) -> None:
    realtime = [realtime_event(thread) for _ in range(6)]
    events = [llm_event(thread) for _ in range(20)] + [
        tts_event(thread, 37),
        stt_event(thread, "2.5"),
        *realtime,
    ]
    assert await record_usage_events(sb, events) == 28
    assert await record_usage_events(sb, events) == 0
    assert await record_usage_events(sb, [*events[:5], events[0], realtime[0]]) == 0
    await assert_stats_match(sb, thread, events)
    got = await threads_repo.get_thread(sb, thread["workflow_thread_id"])
    assert got is not None
    stats = got["usage_stats"]
    assert Decimal(str(stats["stt_seconds"])) == Decimal("2.5")
    assert stats["models_used"]["gpt-4o-mini"]["calls"] == 20
    # The audio parts, per model too: all of them the realtime model's.
    per_model = stats["models_used"]
    for name in ("input_audio_tokens", "output_audio_tokens", "cache_read_audio_tokens"):
        assert per_model["gpt-realtime"][name] == sum(getattr(e, name) for e in realtime), name
        assert per_model["gpt-4o-mini"][name] == 0, name
    assert per_model["gpt-realtime"]["calls"] == 6
    assert Decimal(str(per_model["gpt-realtime"]["cost_usd"])) == sum(
        (e.cost_usd for e in realtime if e.cost_usd is not None), Decimal(0)
    )
    assert stats["posthog_trace_id"] == thread["workflow_thread_id"]
    assert Decimal(str(stats["bot_cost_usd"])) == Decimal(str(stats["total_cost_usd"]))


async def test_sixteen_concurrent_writers_with_overlapping_batches_count_each_event_once(
    settings: Any, sb: AsyncClient, api_key: dict
) -> None:
    threads = [
        await threads_repo.create_thread(sb, api_key_id=api_key["id"], transport="simulated")
        for _ in range(3)
    ]
    pool = [llm_event(random.choice(threads)) for _ in range(400)]
    pool += [realtime_event(random.choice(threads)) for _ in range(60)]
    pool += [tts_event(random.choice(threads), random.randint(1, 300)) for _ in range(50)]
    clients = [
        await acreate_client(
            settings.supabase_url, settings.supabase_service_role_key.get_secret_value()
        )
        for _ in range(4)
    ]

    async def writer(i: int) -> int:
        rnd = random.Random(i)
        total = 0
        for _ in range(6):
            batch = rnd.sample(pool, 120)
            total += await record_usage_events(clients[i % 4], batch)
        return total

    inserted = await asyncio.gather(*(writer(i) for i in range(16)))
    seen = {e.id for e in pool}
    assert sum(inserted) <= len(seen)
    # Whatever the writers missed, a final pass records; it must add exactly the rest.
    rest = await record_usage_events(sb, pool)
    assert sum(inserted) + rest == len(seen)
    for t in threads:
        mine = [e for e in pool if str(e.workflow_thread_id) == t["workflow_thread_id"]]
        await assert_stats_match(sb, t, mine)


async def test_unknown_model_is_recorded_as_unpriced(sb: AsyncClient, thread: dict) -> None:
    event = llm_event(thread, model="gpt-from-the-future", input_tokens=100, output_tokens=10)
    assert event.cost_usd is None
    assert await record_usage_events(sb, [event, llm_event(thread)]) == 2
    got = await threads_repo.get_thread(sb, thread["workflow_thread_id"])
    assert got is not None
    assert got["usage_stats"]["unpriced_events"] == 1
    assert got["usage_stats"]["models_used"]["gpt-from-the-future"]["calls"] == 1


async def test_rls_refuses_the_anon_role(
    stack: localstack.StackInfo, sb: AsyncClient, thread: dict
) -> None:
    await record_usage_events(sb, [llm_event(thread)])
    anon = await acreate_client(stack.supabase_url, stack.anon_key)
    for table in ("api_keys", "workflow_threads", "usage_events", "analytics_integrations"):
        res = await anon.table(table).select("*").execute()
        assert res.data == [], table
    with pytest.raises(DatabaseError, match="permission denied"):
        await record_usage_events(anon, [llm_event(thread)])
    with pytest.raises(DatabaseError):
        await call(anon.table("api_keys").insert({"name": "x", "key_hash": "0" * 64}).execute)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda row: row.update(input_tokens=-5), "input_tokens_nonnegative"),
        (
            lambda row: row.update(workflow_thread_id=str(uuid.uuid4())),
            "unknown workflow_thread_id",
        ),
        (lambda row: row.update(kind="video"), "kind_valid"),
        (lambda row: row.pop("id"), "missing id"),
        (lambda row: row.update(input_audio_tokens=-1), "input_audio_tokens_within_input"),
        (
            lambda row: row.update(input_audio_tokens=row["input_tokens"] + 1),
            "input_audio_tokens_within_input",
        ),
        (
            lambda row: row.update(output_audio_tokens=row["output_tokens"] + 1),
            "output_audio_tokens_within_output",
        ),
        (
            lambda row: row.update(
                cache_read_tokens=10, input_audio_tokens=20, cache_read_audio_tokens=11
            ),
            "cache_read_audio_tokens_within_cache_read",
        ),
        (
            lambda row: row.update(
                cache_read_tokens=20, input_audio_tokens=10, cache_read_audio_tokens=11
            ),
            "cache_read_audio_tokens_within_input_audio",
        ),
        (
            # Each part fits its total, but 80 cached text + 60 uncached audio > 100.
            lambda row: row.update(
                input_tokens=100,
                cache_read_tokens=80,
                input_audio_tokens=60,
                cache_read_audio_tokens=0,
            ),
            "uncached_text_tokens_nonnegative",
        ),
        (
            # Audio beyond the input breaks both; the row is refused for the part that
            # exceeds its total.
            lambda row: row.update(input_tokens=100, cache_read_tokens=80, input_audio_tokens=101),
            "input_audio_tokens_within_input",
        ),
    ],
)
async def test_a_bad_event_rejects_the_whole_batch(
    sb: AsyncClient, thread: dict, mutate: Any, message: str
) -> None:
    good = [llm_event(thread).to_row() for _ in range(3)]
    bad = llm_event(thread).to_row()
    mutate(bad)
    with pytest.raises(DatabaseError, match=message):
        await call(sb.rpc("record_usage_events", {"events": [*good, bad]}).execute)
    assert await ledger_rows(sb, thread["workflow_thread_id"]) == []
    got = await threads_repo.get_thread(sb, thread["workflow_thread_id"])
    assert got is not None and "events" not in got["usage_stats"]


@pytest.mark.parametrize("body", [{"not": "an array"}, ["a string"], None])
async def test_a_malformed_body_is_rejected_with_a_clear_error(sb: AsyncClient, body: Any) -> None:
    with pytest.raises(DatabaseError, match=r"JSON|array|object"):
        await call(sb.rpc("record_usage_events", {"events": body}).execute)


AUDIO_COMMON: dict[str, Any] = {
    "workflow_thread_id": uuid.uuid4(),
    "api_key_id": uuid.uuid4(),
    "kind": UsageKind.LLM,
    "provider": "openai",
    "model": "gpt-realtime",
    "input_tokens": 100,
    "output_tokens": 50,
    "cache_read_tokens": 40,
}


@pytest.mark.parametrize(
    "counts, message",
    [
        (
            {"input_audio_tokens": 101},
            r"input_audio_tokens \(101\) cannot exceed input_tokens \(100\)",
        ),
        (
            {"output_audio_tokens": 51},
            r"output_audio_tokens \(51\) cannot exceed output_tokens \(50\)",
        ),
        (
            {"input_audio_tokens": 60, "cache_read_audio_tokens": 41},
            r"cache_read_audio_tokens \(41\) cannot exceed cache_read_tokens \(40\)",
        ),
        (
            {"input_audio_tokens": 30, "cache_read_audio_tokens": 31},
            r"cache_read_audio_tokens \(31\) cannot exceed input_audio_tokens \(30\)",
        ),
        (
            {"input_audio_tokens": 70, "cache_read_audio_tokens": 5},
            r"\(105\) cannot exceed input_tokens \(100\): cached and audio input overlap",
        ),
        ({"cache_read_audio_tokens": -1}, "greater than or equal to 0"),
    ],
)
def test_the_event_model_refuses_audio_parts_beyond_their_totals(
    counts: dict[str, int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        UsageEvent(**AUDIO_COMMON, **counts)


def test_audio_parts_at_their_limits_are_accepted() -> None:
    # All input is audio, all of it cached; all output is audio.
    event = UsageEvent(
        **{**AUDIO_COMMON, "cache_read_tokens": 100},
        input_audio_tokens=100,
        cache_read_audio_tokens=100,
        output_audio_tokens=50,
    )
    assert UsageEvent.from_row(event.to_row()) == event
    # A row spooled before modalities existed reads back with no audio.
    row = event.to_row()
    for name in ("input_audio_tokens", "output_audio_tokens", "cache_read_audio_tokens"):
        row.pop(name)
    old = UsageEvent.from_row(row)
    assert (old.input_audio_tokens, old.output_audio_tokens, old.cache_read_audio_tokens) == (
        0,
        0,
        0,
    )


def test_the_event_model_refuses_negative_counts() -> None:
    with pytest.raises(ValueError):
        UsageEvent(
            workflow_thread_id=uuid.uuid4(),
            api_key_id=uuid.uuid4(),
            kind=UsageKind.LLM,
            provider="openai",
            model="gpt-4o-mini",
            output_tokens=-1,
        )


async def test_the_cost_split_is_stored_with_its_total_and_a_wrong_total_is_refused(
    sb: AsyncClient, thread: dict
) -> None:
    event = llm_event(thread, input_tokens=1200, output_tokens=80, cache_read_tokens=1024)
    assert event.input_cost_usd is not None and event.output_cost_usd is not None
    assert event.cost_usd == event.input_cost_usd + event.output_cost_usd
    voice = tts_event(thread, 40)
    assert (voice.input_cost_usd, voice.output_cost_usd) == (voice.cost_usd, Decimal(0))
    assert await record_usage_events(sb, [event, voice]) == 2
    res = await call(
        sb.table("usage_events")
        .select("id,cost_usd::text,input_cost_usd::text,output_cost_usd::text")
        .eq("workflow_thread_id", thread["workflow_thread_id"])
        .execute
    )
    rows = {r["id"]: r for r in rows_of(res)}
    stored = rows[str(event.id)]
    assert Decimal(stored["input_cost_usd"]) == event.input_cost_usd
    assert Decimal(stored["output_cost_usd"]) == event.output_cost_usd
    assert Decimal(stored["cost_usd"]) == event.cost_usd
    # The database derives the total from the split and refuses a row that disagrees.
    row = llm_event(thread).to_row()
    row.pop("cost_usd")
    assert await call(sb.rpc("record_usage_events", {"events": [row]}).execute)
    bad = {**llm_event(thread).to_row(), "input_cost_usd": "1", "output_cost_usd": None}
    with pytest.raises(DatabaseError, match="cost_split_whole"):
        await call(sb.rpc("record_usage_events", {"events": [bad]}).execute)


def test_the_event_model_derives_its_total_from_the_split() -> None:
    common: dict[str, Any] = {
        "workflow_thread_id": uuid.uuid4(),
        "api_key_id": uuid.uuid4(),
        "kind": UsageKind.LLM,
        "provider": "openai",
        "model": "gpt-4o-mini",
    }
    event = UsageEvent(**common, input_cost_usd=Decimal("0.0001"), output_cost_usd=Decimal("0.2"))
    assert event.cost_usd == Decimal("0.2001")
    assert UsageEvent.from_row(event.to_row()) == event
    with pytest.raises(ValueError, match="together"):
        UsageEvent(**common, input_cost_usd=Decimal("0.1"))
    with pytest.raises(ValueError, match="not input_cost_usd"):
        UsageEvent(**common, input_cost_usd=1, output_cost_usd=1, cost_usd=Decimal("3"))
    # A row spooled before the split existed still reads back, with its total.
    legacy = UsageEvent(**common, cost_usd=Decimal("0.5"))
    assert (legacy.cost_usd, legacy.input_cost_usd) == (Decimal("0.5"), None)


async def test_deleting_a_key_or_a_call_with_usage_is_refused_and_the_ledger_stays(
    sb: AsyncClient, thread: dict
) -> None:
    events = [llm_event(thread), tts_event(thread, 12)]
    assert await record_usage_events(sb, events) == 2
    with pytest.raises(DatabaseError, match="foreign key"):
        await call(
            sb.table("workflow_threads")
            .delete()
            .eq("workflow_thread_id", thread["workflow_thread_id"])
            .execute
        )
    with pytest.raises(DatabaseError, match="foreign key"):
        await call(sb.table("api_keys").delete().eq("id", thread["api_key_id"]).execute)
    assert len(await ledger_rows(sb, thread["workflow_thread_id"])) == 2
