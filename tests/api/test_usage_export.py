"""The billing CSV: ``GET /api/usage/export.csv`` and ``flow usage --csv`` give the same
rows, each equal to the ledger's events in its period; start inclusive, end exclusive;
a customer sees its own key only, an operator every key; paging through keys changes
nothing."""

from __future__ import annotations

import csv
import io
import random
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from supabase import AsyncClient

from flow import localstack
from flow.billing import csv_export
from flow.db import keys as keys_repo
from flow.db import operators as operators_repo
from flow.db import threads as threads_repo
from flow.db.usage import record_usage_events
from flow.metering.events import UsageEvent
from tests.api.conftest import bearer
from tests.integration.test_cli_usage import flow_cli
from tests.integration.test_ledger import llm_event, stt_event, telephony_event, tts_event

START = datetime(2026, 2, 27, 22, 30, tzinfo=UTC)
END = datetime(2026, 3, 2, 1, 15, tzinfo=UTC)


async def seed(sb: AsyncClient, rnd: random.Random) -> tuple[dict[str, Any], list[UsageEvent]]:
    row, plaintext = await keys_repo.create_local_key(sb, f"csv, {uuid.uuid4().hex[:6]}")
    events: list[UsageEvent] = []
    for _ in range(3):
        thread = await threads_repo.create_thread(sb, api_key_id=row["id"], transport="simulated")
        for _ in range(12):
            at = START - timedelta(hours=2) + timedelta(minutes=rnd.randint(0, 60 * 55))
            make = rnd.choice(
                [
                    lambda t: llm_event(t),
                    lambda t: llm_event(t, model="mystery-model", cost_usd=None),
                    lambda t: tts_event(t, rnd.randint(10, 200)),
                    lambda t: stt_event(t, f"{rnd.randint(1, 9)}.{rnd.randint(0, 999):03d}"),
                    lambda t: telephony_event(
                        t, f"{rnd.randint(1, 900)}.{rnd.randint(0, 999):03d}"
                    ),
                ]
            )
            events.append(make(thread).model_copy(update={"occurred_at": at}))
        # Exactly at the edges: start is in, end is out.
        events.append(llm_event(thread).model_copy(update={"occurred_at": START}))
        events.append(llm_event(thread).model_copy(update={"occurred_at": END}))
    await record_usage_events(sb, events)
    return {**row, "plaintext": plaintext}, events


def expected_rows(
    key: dict[str, Any], events: list[UsageEvent], period: str | None
) -> list[list[str]]:
    buckets: dict[datetime, list[UsageEvent]] = defaultdict(list)
    for e in events:
        if not START <= e.occurred_at < END:
            continue
        if period == "day":
            bucket = e.occurred_at.replace(hour=0, minute=0, second=0, microsecond=0)
        elif period == "month":
            bucket = e.occurred_at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        else:
            bucket = START
        buckets[bucket].append(e)
    rows = []
    for bucket, group in sorted(buckets.items()):
        if period == "day":
            bucket_end = bucket + timedelta(days=1)
        elif period == "month":
            bucket_end = bucket.replace(month=bucket.month % 12 + 1)
        else:
            bucket_end = END
        rows.append(
            [
                str(key["id"]),
                key["name"],
                csv_export.iso_utc(max(bucket, START)),
                csv_export.iso_utc(min(bucket_end, END)),
                str(len({e.workflow_thread_id for e in group})),
                str(sum(1 for e in group if e.kind == "llm")),
                str(sum(e.input_tokens for e in group)),
                str(sum(e.output_tokens for e in group)),
                str(sum(e.characters for e in group if e.kind == "tts")),
                sum((e.audio_seconds for e in group if e.kind == "stt"), Decimal(0)),
                sum((e.audio_seconds for e in group if e.kind == "telephony"), Decimal(0)),
                sum((e.cost_usd or Decimal(0) for e in group), Decimal(0)),
                str(sum(1 for e in group if e.cost_usd is None)),
            ]
        )
    return rows


def parsed(text: str) -> tuple[list[str], list[list[Any]]]:
    header, *rows = list(csv.reader(io.StringIO(text)))
    for row in rows:
        row[9], row[10], row[11] = Decimal(row[9]), Decimal(row[10]), Decimal(row[11])
    return header, rows


@pytest.mark.parametrize("period", [None, "day", "month"])
async def test_csv_rows_equal_the_ledger_for_the_customer_and_the_operator(
    stack: localstack.StackInfo, sb: AsyncClient, client: httpx.AsyncClient, period: str | None
) -> None:
    rnd = random.Random(11)
    mine, my_events = await seed(sb, rnd)
    theirs, their_events = await seed(sb, rnd)
    params: dict[str, str] = {"start": START.isoformat(), "end": END.isoformat()}
    if period:
        params["group_by"] = period

    resp = await client.get("/api/usage/export.csv", params=params, headers=bearer(mine))
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/csv")
    assert "attachment" in resp.headers["content-disposition"]
    header, rows = parsed(resp.text)
    assert tuple(header) == csv_export.COLUMNS
    assert rows == expected_rows(mine, my_events, period)

    _, token = await operators_repo.create_token(sb, "csv ops")
    ops = await client.get(
        "/api/usage/export.csv", params=params, headers={"Authorization": f"Bearer {token}"}
    )
    assert ops.status_code == 200
    _, all_rows = parsed(ops.text)
    for key, events in ((mine, my_events), (theirs, their_events)):
        assert [r for r in all_rows if r[0] == str(key["id"])] == expected_rows(key, events, period)
    ids = [r[0] for r in all_rows]
    assert ids == sorted(ids)

    args = ["usage", "--csv", "--key", str(mine["id"]), "--start", params["start"]]
    args += ["--end", params["end"]] + (["--group-by", period] if period else [])
    out = flow_cli(stack, *args)
    assert out.returncode == 0, out.stderr
    assert out.stdout == resp.text


async def test_paging_through_keys_changes_no_row(
    sb: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    rnd = random.Random(2)
    seeded = [await seed(sb, rnd) for _ in range(3)]
    ids = [str(k["id"]) for k, _ in seeded]

    async def text() -> str:
        lines = csv_export.csv_lines(sb, START, END, "day", key_ids=ids)
        return "".join([line async for line in lines])

    whole = await text()
    monkeypatch.setattr(csv_export, "ROWS_PER_PAGE", 1)
    assert await text() == whole
    _, rows = parsed(whole)
    assert {r[0] for r in rows} == set(ids)


async def test_csv_refuses_a_bad_range_and_grouping(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    backwards = {"start": END.isoformat(), "end": START.isoformat()}
    assert (
        await client.get("/api/usage/export.csv", params=backwards, headers=auth)
    ).status_code == 422
    model = {"group_by": "model"}
    assert (
        await client.get("/api/usage/export.csv", params=model, headers=auth)
    ).status_code == 422
    assert (await client.get("/api/usage/export.csv")).status_code == 401


def test_the_cli_csv_refuses_what_the_api_refuses(stack: localstack.StackInfo) -> None:
    too_long = ["usage", "--csv", "--start", "2025-01-01", "--end", "2026-02-06"]
    out = flow_cli(stack, *too_long)
    assert out.returncode == 2 and "at most 400 days" in out.stderr
    backwards = flow_cli(stack, "usage", "--csv", "--start", "2026-02-06", "--end", "2026-01-01")
    assert backwards.returncode == 2 and "start must be before end" in backwards.stderr
