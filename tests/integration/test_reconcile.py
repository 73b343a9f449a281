"""`flow reconcile`: the ledger against OpenAI's own usage, per day, model and unit.

The ledger holds January 2025 as Flow metered it: one event per request of the
recorded usage of ``proj_flow`` (``tests/recordings/openai_usage``), priced at the
recording's rates. The recording then agrees with the ledger exactly, through a fake of
OpenAI's Usage API (paginated) and from files; a copy with one difference makes exactly
that line differ, with the right diagnosis.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from supabase import AsyncClient

from flow import localstack
from flow.config import MAX_REPORT_DAYS
from flow.db import keys as keys_repo
from flow.db import threads as threads_repo
from flow.db.client import DatabaseError
from flow.db.usage import ledger_daily_usage, record_usage_events
from flow.metering.events import UsageEvent, UsageKind, event_id_from
from flow.metering.pricing import PriceBook, cost_fields
from tests.fakes.openai_usage_server import FakeOpenAIUsage, recordings
from tests.integration.test_cli_usage import flow_cli
from tests.recordings.openai_usage.make import RATES

Pages = dict[str, list[dict[str, Any]]]
JANUARY = ("--start", "2025-01-01", "--end", "2025-01-31")
# What Flow asked for, by the snapshot OpenAI reports.
LEDGER_NAMES = {
    "gpt-4o-mini-2024-07-18": "gpt-4o-mini",
    "gpt-realtime-2025-08-28": "gpt-realtime",
    "tts-1": "tts-1",
    "whisper-1": "whisper-1",
}
BOOK = PriceBook(
    llm_overrides={
        LEDGER_NAMES[m]: RATES[m] for m in ("gpt-4o-mini-2024-07-18", "gpt-realtime-2025-08-28")
    },
    voice_prices={"openai/tts-1": RATES["tts-1"], "openai/whisper-1": RATES["whisper-1"]},
)
KIND = {"completions": UsageKind.LLM, "audio_speeches": UsageKind.TTS}


def ledger_events(pages: Pages, thread: dict[str, Any]) -> list[UsageEvent]:
    """One event per request ``proj_flow`` made, as Flow would have metered it."""
    events = []
    for endpoint in ("completions", "audio_speeches", "audio_transcriptions"):
        for page in pages[endpoint]:
            for bucket in page["data"]:
                day = datetime.fromtimestamp(bucket["start_time"], UTC)
                for result in bucket["results"]:
                    if result["project_id"] == "proj_flow":
                        events += request_events(endpoint, day, result, thread)
    return events


def request_events(
    endpoint: str, day: datetime, result: dict[str, Any], thread: dict[str, Any]
) -> list[UsageEvent]:
    n, model = result["num_model_requests"], LEDGER_NAMES[result["model"]]

    def each(name: str) -> int:
        assert result[name] % n == 0, "every request of a bucket has the same counts"
        return int(result[name] // n)

    events = []
    for i in range(n):
        fields: dict[str, Any] = {}
        if endpoint == "completions":
            counts = {
                "input_tokens": each("input_tokens"),
                "cache_read_tokens": each("input_cached_tokens"),
                "output_tokens": each("output_tokens"),
                "input_audio_tokens": each("input_audio_tokens"),
                "output_audio_tokens": each("output_audio_tokens"),
            }
            fields = {**counts, **cost_fields(BOOK.llm("openai", model, **counts))}
        elif endpoint == "audio_speeches":
            chars = each("characters")
            fields = {"characters": chars, **cost_fields(BOOK.tts("openai", model, chars))}
        else:
            seconds = Decimal(each("seconds"))
            fields = {"audio_seconds": seconds, **cost_fields(BOOK.stt("openai", model, seconds))}
        events.append(
            UsageEvent(
                id=event_id_from("reconcile-test", f"{day.date()}/{model}/{i}"),
                workflow_thread_id=thread["workflow_thread_id"],
                api_key_id=thread["api_key_id"],
                occurred_at=day + timedelta(hours=i + 1),
                kind=KIND.get(endpoint, UsageKind.STT),
                provider="openai",
                model=model,
                **fields,
            )
        )
    return events


@pytest.fixture(scope="module")
async def january(sb: AsyncClient) -> list[UsageEvent]:
    key, _ = await keys_repo.create_local_key(sb, f"reconcile-{uuid.uuid4().hex[:8]}")
    thread = await threads_repo.create_thread(sb, api_key_id=key["id"], transport="simulated")
    events = ledger_events(recordings(), thread)
    await record_usage_events(sb, events)
    return events


def write(tmp_path: Path, pages: Pages) -> list[str]:
    """``--usage-file`` arguments for these pages, one file per endpoint."""
    args = []
    for name, endpoint_pages in pages.items():
        path = tmp_path / f"{name}.json"
        path.write_text("".join(json.dumps(page) + "\n" for page in endpoint_pages))
        args += ["--usage-file", str(path)]
    return args


def flagged(report: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    return {
        (line["day"], line["model"], line["unit"], line["diagnosis"])
        for line in report["lines"]
        if line["diagnosis"] != "ok"
    }


def result_of(pages: Pages, endpoint: str, day: str, **match: str) -> dict[str, Any]:
    start = int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp())
    for page in pages[endpoint]:
        for bucket in page["data"]:
            if bucket["start_time"] == start:
                [found] = [r for r in bucket["results"] if match.items() <= r.items()]
                return found
    raise AssertionError(f"no bucket for {day}")


async def test_a_month_that_matches_the_ledger_agrees_through_the_paginated_api(
    stack: localstack.StackInfo, january: list[UsageEvent]
) -> None:
    fake = FakeOpenAIUsage(page_size=7).start()
    try:
        admin = {"OPENAI_ADMIN_KEY": fake.admin_key, "OPENAI_ADMIN_BASE_URL": fake.base_url}
        args = ("reconcile", "--provider", "openai", *JANUARY, "--project", "proj_flow")
        out = flow_cli(stack, *args, "--json", **admin)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr
        report = json.loads(out.stdout)
        assert report["agrees"] and report["summary"]["differences"] == 0
        assert "whole project proj_flow" in report["vendor_scope"]
        # 31 daily buckets, 7 a page: 5 pages from each of the 4 endpoints.
        assert len(fake.requests) == 20
        assert all(q.get("project_ids[]") == ["proj_flow"] for _, q in fake.requests)
        lines = {(ln["day"], ln["model"], ln["unit"]): ln for ln in report["lines"]}
        mini = lines[("2025-01-14", "gpt-4o-mini", "requests")]
        assert mini["ledger_models"] == ["gpt-4o-mini"]
        assert mini["vendor_models"] == ["gpt-4o-mini-2024-07-18"]
        assert mini["ledger"] == mini["vendor"] and mini["difference"] == "0"
        assert ("2025-01-03", "gpt-realtime", "output_audio_tokens") in lines
        assert ("2025-01-31", "whisper-1", "cost_usd") in lines
        requests = sum(Decimal(ln["ledger"]) for ln in report["lines"] if ln["unit"] == "requests")
        assert requests == len(january)

        table = flow_cli(stack, *args, **admin)
        assert table.returncode == 0, table.stderr
        assert "gpt-4o-mini = gpt-4o-mini-2024-07-18" in table.stdout
        assert "0 differ" in table.stdout and "everything agrees" in table.stdout
    finally:
        fake.stop()


async def test_without_a_project_the_other_apps_usage_is_a_coverage_difference(
    stack: localstack.StackInfo, january: list[UsageEvent], tmp_path: Path
) -> None:
    out = flow_cli(stack, "reconcile", *JANUARY, "--json", *write(tmp_path, recordings()))
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    assert "proj_flow, proj_other" in report["vendor_scope"]
    found = flagged(report)
    assert found and {diagnosis for *_, diagnosis in found} == {"coverage"}
    assert {model for _, model, _, _ in found} == {"gpt-4o", "tts-1"}
    # tts-1 differs only on the days the other project spoke too.
    assert {day for day, model, *_ in found if model == "tts-1"} == {
        f"2025-01-{d:02d}" for d in (5, 10, 15, 20, 25, 30)
    }


def more_requests(pages: Pages) -> None:
    result = result_of(pages, "completions", "2025-01-14", model="gpt-4o-mini-2024-07-18")
    result["num_model_requests"] += 1
    result["input_tokens"] += 500
    result["output_tokens"] += 40


def fewer_requests(pages: Pages) -> None:
    start = int(datetime(2025, 1, 25, tzinfo=UTC).timestamp())
    for page in pages["audio_transcriptions"]:
        for bucket in page["data"]:
            if bucket["start_time"] == start:
                bucket["results"] = []


def more_characters(pages: Pages) -> None:
    result_of(pages, "audio_speeches", "2025-01-20", project_id="proj_flow")["characters"] += 37


def dearer_output(pages: Pages) -> None:
    item = "gpt-4o-mini-2024-07-18, output"
    result_of(pages, "costs", "2025-01-09", line_item=item)["amount"]["value"] += 0.5


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            more_requests,
            {
                ("2025-01-14", "gpt-4o-mini", unit, "coverage")
                for unit in ("requests", "input_tokens", "output_tokens")
            },
        ),
        (
            fewer_requests,
            {("2025-01-25", "whisper-1", unit, "coverage") for unit in ("requests", "seconds")},
        ),
        (more_characters, {("2025-01-20", "tts-1", "characters", "units")}),
        (dearer_output, {("2025-01-09", "gpt-4o-mini", "cost_usd", "rate")}),
    ],
    ids=["vendor-served-more", "ledger-has-more", "units", "rate"],
)
async def test_one_difference_is_flagged_on_its_line_with_its_diagnosis(
    stack: localstack.StackInfo,
    january: list[UsageEvent],
    tmp_path: Path,
    change: Callable[[Pages], None],
    expected: set[tuple[str, str, str, str]],
) -> None:
    pages = copy.deepcopy(recordings())
    change(pages)
    files = write(tmp_path, pages)
    args = ("reconcile", *JANUARY, "--project", "proj_flow", *files)
    out = flow_cli(stack, *args, "--json")
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    assert flagged(report) == expected
    assert not report["agrees"]

    table = flow_cli(stack, *args, "--only-differences")
    assert table.returncode == 1, table.stderr
    for day, model, unit, diagnosis in expected:
        [line] = [ln for ln in table.stdout.splitlines() if ln.startswith(day) and unit in ln]
        assert model in line and line.endswith(diagnosis)


async def test_the_vendor_refusing_the_key_is_an_error_not_a_verdict(
    stack: localstack.StackInfo,
) -> None:
    fake = FakeOpenAIUsage().start()
    try:
        admin = {"OPENAI_ADMIN_KEY": "sk-admin-wrong", "OPENAI_ADMIN_BASE_URL": fake.base_url}
        out = flow_cli(stack, "reconcile", *JANUARY, **admin)
        assert out.returncode == 2 and "answered 401" in out.stderr
        assert "sk-admin-wrong" not in out.stderr
    finally:
        fake.stop()
    backwards = flow_cli(stack, "reconcile", "--start", "2025-02-01", "--end", "2025-01-01")
    assert backwards.returncode == 2 and "before --start" in backwards.stderr


async def test_the_sql_reads_at_most_the_days_every_report_may_span(sb: AsyncClient) -> None:
    end = datetime(2026, 6, 1, tzinfo=UTC)
    await ledger_daily_usage(sb, "openai", end - timedelta(days=MAX_REPORT_DAYS), end)
    longer = end - timedelta(days=MAX_REPORT_DAYS, seconds=1)
    with pytest.raises(DatabaseError, match=f"at most {MAX_REPORT_DAYS} days"):
        await ledger_daily_usage(sb, "openai", longer, end)
