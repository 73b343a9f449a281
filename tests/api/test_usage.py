"""GET /api/usage: every figure equals the same figure computed here, independently, from
the events the test recorded through the real ledger RPC, for every ``group_by``."""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import httpx
import pytest
from supabase import AsyncClient

from flow.db import keys as keys_repo
from flow.db import threads as threads_repo
from flow.db.usage import record_usage_events
from flow.metering.events import UsageEvent

GROUPINGS: dict[str, Callable[[UsageEvent], str | None]] = {
    "day": lambda e: e.occurred_at.astimezone(UTC).strftime("%Y-%m-%d"),
    "model": lambda e: e.model,
    "category": lambda e: str(e.category),
    "kind": lambda e: str(e.kind),
    "end_user": lambda e: e.end_user_id,
}


def _round(value: Decimal, places: int) -> str:
    return str(value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def expected_figures(events: Iterable[UsageEvent]) -> dict[str, Any]:
    """The report's definitions, computed in Python from the events themselves."""
    events = list(events)
    cost = sum((e.cost_usd or Decimal(0) for e in events), Decimal(0))
    calls = {e.workflow_thread_id for e in events}
    users = {e.end_user_id for e in events if e.end_user_id is not None}
    user_cost = sum(
        (e.cost_usd or Decimal(0) for e in events if e.end_user_id is not None), Decimal(0)
    )
    latencies = [e.latency_ms for e in events if e.kind == "llm" and e.latency_ms is not None]
    errors = sum(1 for e in events if e.is_error)
    return {
        "calls": len(calls),
        "end_users": len(users),
        "events": len(events),
        "llm_calls": sum(1 for e in events if e.kind == "llm"),
        "input_tokens": sum(e.input_tokens for e in events),
        "output_tokens": sum(e.output_tokens for e in events),
        "cached_tokens": sum(e.cache_read_tokens for e in events),
        "input_audio_tokens": sum(e.input_audio_tokens for e in events),
        "output_audio_tokens": sum(e.output_audio_tokens for e in events),
        "cache_read_audio_tokens": sum(e.cache_read_audio_tokens for e in events),
        "tts_characters": sum(e.characters for e in events if e.kind == "tts"),
        "stt_seconds": sum((e.audio_seconds for e in events if e.kind == "stt"), Decimal(0)),
        "telephony_seconds": sum(
            (e.audio_seconds for e in events if e.kind == "telephony"), Decimal(0)
        ),
        "cost_usd": cost,
        "unpriced_events": sum(1 for e in events if e.cost_usd is None),
        "avg_cost_per_call_usd": _round(cost / len(calls), 10) if calls else None,
        "avg_cost_per_end_user_usd": _round(user_cost / len(users), 10) if users else None,
        "avg_llm_latency_ms": _round(sum(latencies, Decimal(0)) / len(latencies), 1)
        if latencies
        else None,
        "error_events": errors,
        "error_rate": _round(Decimal(errors) / len(events), 4) if events else None,
    }


def as_reported(figures: dict[str, Any]) -> dict[str, Any]:
    """The API's figures with decimal strings parsed, for exact comparison."""
    out = dict(figures)
    for name in ("stt_seconds", "telephony_seconds", "cost_usd"):
        out[name] = Decimal(out[name])
    return out


def _events_for(
    rng: random.Random,
    thread_ids: list[str],
    api_key_id: str,
    around: tuple[datetime, datetime],
    count: int,
) -> list[UsageEvent]:
    start, end = around
    span_seconds = (end - start).total_seconds()
    events = []
    for _ in range(count):
        kind = rng.choice(["llm", "llm", "tts", "stt", "telephony"])
        at = start + timedelta(seconds=rng.uniform(0, span_seconds))
        priced = rng.random() > 0.15
        fields: dict[str, Any] = {
            "workflow_thread_id": rng.choice(thread_ids),
            "api_key_id": api_key_id,
            "end_user_id": rng.choice(["alice", "bob", "carol", None]),
            "occurred_at": at,
            "kind": kind,
            "category": rng.choice(["bot", "bot", "insights"]) if kind == "llm" else "bot",
            "is_error": rng.random() < 0.1,
            "cost_usd": Decimal(rng.randint(0, 10**7)).scaleb(-10) if priced else None,
        }
        if kind == "llm":
            model = rng.choice(["gpt-4o-mini", "gpt-4.1", "mystery-model", "gpt-realtime"])
            input_tokens = rng.randint(1, 5000)
            fields |= {
                "provider": "openai",
                "model": model,
                "input_tokens": input_tokens,
                "cache_read_tokens": rng.randint(0, input_tokens),
                "output_tokens": rng.randint(0, 800),
                "latency_ms": Decimal(rng.randint(50, 30000)).scaleb(-1)
                if rng.random() > 0.2
                else None,
            }
            if model == "gpt-realtime":  # speech to speech: audio inside every total
                fields |= _audio_parts(rng, fields)
        elif kind == "tts":
            fields |= {"provider": "openai", "model": "tts-1", "characters": rng.randint(1, 400)}
        elif kind == "telephony":
            fields |= {
                "provider": "twilio",
                "model": rng.choice(["inbound", "outbound"]),
                "audio_seconds": Decimal(rng.randint(1, 900000)).scaleb(-3),
            }
        else:
            fields |= {
                "provider": "deepgram",
                "model": "nova-3",
                "audio_seconds": Decimal(rng.randint(1, 60000)).scaleb(-3),
            }
        events.append(UsageEvent(**fields))
    return events


def _audio_parts(rng: random.Random, counts: dict[str, Any]) -> dict[str, int]:
    """Audio parts that fit the event's totals: the cached audio inside the cache reads,
    the uncached audio inside what the cache reads leave of the input."""
    cached_audio = rng.randint(0, counts["cache_read_tokens"])
    uncached_room = counts["input_tokens"] - counts["cache_read_tokens"]
    return {
        "cache_read_audio_tokens": cached_audio,
        "input_audio_tokens": cached_audio + rng.randint(0, uncached_room),
        "output_audio_tokens": rng.randint(0, counts["output_tokens"]),
    }


@pytest.fixture
async def recorded(
    sb: AsyncClient, api_key: dict[str, Any]
) -> tuple[list[UsageEvent], datetime, datetime]:
    """Events for the key around a range whose ends fall mid-hour, plus another key's."""
    rng = random.Random(20261127)
    start = datetime(2026, 3, 9, 21, 17, 23, 500000, tzinfo=UTC)
    end = start + timedelta(hours=29, minutes=11)
    threads = [
        str(
            (
                await threads_repo.create_thread(
                    sb, api_key_id=api_key["id"], transport="simulated", script=["hi"]
                )
            )["workflow_thread_id"]
        )
        for _ in range(5)
    ]
    # Some events land just outside the range on either side.
    around = (start - timedelta(hours=2), end + timedelta(hours=2))
    events = _events_for(rng, threads, str(api_key["id"]), around, 400)
    # Events exactly on the boundaries: start is included, end is not.
    events += [
        e.model_copy(update={"id": uuid.uuid4(), "occurred_at": t})
        for e, t in ((events[0], start), (events[1], end))
    ]
    # Speech-to-speech usage in the partial hours at both ends too (read from the ledger).
    spoken = next(e for e in events if e.input_audio_tokens > 0)
    events += [
        spoken.model_copy(update={"id": uuid.uuid4(), "occurred_at": t})
        for t in (start + timedelta(seconds=90), end - timedelta(seconds=90))
    ]
    assert await record_usage_events(sb, events) == len(events)

    other_row, _ = await keys_repo.create_local_key(sb, "someone else")
    other_thread = await threads_repo.create_thread(
        sb, api_key_id=other_row["id"], transport="simulated", script=["x"]
    )
    await record_usage_events(
        sb,
        _events_for(
            rng, [str(other_thread["workflow_thread_id"])], str(other_row["id"]), around, 50
        ),
    )
    in_range = [e for e in events if start <= e.occurred_at < end]
    assert len(in_range) < len(events)
    # Audio in the whole hours (rollups) and in the partial hours at both ends (ledger).
    first_whole = start.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    last_whole_end = end.replace(minute=0, second=0, microsecond=0)
    for part in (
        [e for e in in_range if e.occurred_at < first_whole],
        [e for e in in_range if e.occurred_at >= last_whole_end],
        [e for e in in_range if first_whole <= e.occurred_at < last_whole_end],
    ):
        assert sum(e.input_audio_tokens for e in part) > 0
    return in_range, start, end


@pytest.mark.parametrize("group_by", [None, *GROUPINGS])
async def test_usage_report_matches_sums_of_the_recorded_events(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    recorded: tuple[list[UsageEvent], datetime, datetime],
    group_by: str | None,
) -> None:
    events, start, end = recorded
    params = {"start": start.isoformat(), "end": end.isoformat()}
    if group_by:
        params["group_by"] = group_by
    res = await client.get("/api/usage", params=params, headers=auth)
    assert res.status_code == 200, res.text
    report = res.json()
    assert report["group_by"] == group_by
    assert as_reported(report["totals"]) == expected_figures(events)
    for name in ("cost_usd", "stt_seconds", "avg_cost_per_call_usd"):
        assert isinstance(report["totals"][name], str)
    assert report["totals"]["input_audio_tokens"] > 0

    if group_by is None:
        assert report["groups"] == []
        return
    grouping = GROUPINGS[group_by]
    by_key: dict[str | None, list[UsageEvent]] = defaultdict(list)
    for e in events:
        by_key[grouping(e)].append(e)
    got = {g["key"]: g for g in report["groups"]}
    assert set(got) == set(by_key)
    for key, group_events in by_key.items():
        figures = {k: v for k, v in got[key].items() if k != "key"}
        assert as_reported(figures) == expected_figures(group_events), key


async def test_usage_report_of_a_key_without_usage_is_all_zero(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    res = await client.get("/api/usage", params={"group_by": "day"}, headers=auth)
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["groups"] == []
    assert as_reported(body["totals"]) == expected_figures([])
    # The default range is the last 30 days.
    span = datetime.fromisoformat(body["end"]) - datetime.fromisoformat(body["start"])
    assert span == timedelta(days=30)


@pytest.mark.parametrize(
    "params",
    [
        {"group_by": "week"},
        {"start": "2026-03-02T00:00:00Z", "end": "2026-03-01T00:00:00Z"},
        {"start": "2026-03-01T00:00:00Z", "end": "2026-03-01T00:00:00Z"},
        {"start": "2020-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
        {"start": "yesterday"},
    ],
)
async def test_bad_usage_queries_are_422(
    client: httpx.AsyncClient, auth: dict[str, str], params: dict[str, str]
) -> None:
    res = await client.get("/api/usage", params=params, headers=auth)
    assert res.status_code == 422, res.text
    body = res.json()
    assert body["error"] == "validation_error"
    assert body["message"]


async def test_dashboard_totals_carry_the_audio_parts(
    sb: AsyncClient, client: httpx.AsyncClient, auth: dict[str, str], api_key: dict[str, Any]
) -> None:
    """Events in whole hours (read from the rollup) and in the current hour (read from
    the ledger) alike."""
    rng = random.Random(1128)
    thread = await threads_repo.create_thread(
        sb, api_key_id=api_key["id"], transport="simulated", script=["hi"]
    )
    now = datetime.now(UTC)
    around = (now - timedelta(hours=30), now - timedelta(seconds=1))
    events = _events_for(rng, [str(thread["workflow_thread_id"])], str(api_key["id"]), around, 80)
    events.append(
        UsageEvent(
            workflow_thread_id=thread["workflow_thread_id"],
            api_key_id=api_key["id"],
            occurred_at=now - timedelta(seconds=1),
            kind="llm",
            provider="openai",
            model="gpt-realtime",
            input_tokens=900,
            cache_read_tokens=300,
            input_audio_tokens=700,
            cache_read_audio_tokens=250,
            output_tokens=400,
            output_audio_tokens=380,
        )
    )
    assert await record_usage_events(sb, events) == len(events)
    res = await client.get("/api/dashboard", params={"days": 3}, headers=auth)
    assert res.status_code == 200, res.text
    totals = res.json()["totals"]
    for name in ("input_audio_tokens", "output_audio_tokens", "cache_read_audio_tokens"):
        assert totals[name] == sum(getattr(e, name) for e in events), name
    assert totals["tokens"] == sum(e.total_tokens for e in events)
    # STT seconds and phone call seconds, each of its own kind, in totals and per day.
    days = res.json()["volume_by_day"]
    for kind in ("stt", "telephony"):
        seconds = sum((e.audio_seconds for e in events if e.kind == kind), Decimal(0))
        assert seconds > 0
        assert Decimal(totals[f"{kind}_seconds"]) == seconds, kind
        assert sum(Decimal(d[f"{kind}_seconds"]) for d in days) == seconds, kind


async def test_the_openapi_schema_lists_the_audio_parts(client: httpx.AsyncClient) -> None:
    res = await client.get("/openapi.json")
    assert res.status_code == 200
    schemas = res.json()["components"]["schemas"]
    audio = {"input_audio_tokens", "output_audio_tokens", "cache_read_audio_tokens"}
    for name in ("UsageFigures", "UsageGroup", "DashboardTotals", "UsageStats", "ModelUsage"):
        assert audio <= set(schemas[name]["properties"]), name
    for name in ("UsageFigures", "DashboardTotals"):
        assert audio <= set(schemas[name]["required"]), name
