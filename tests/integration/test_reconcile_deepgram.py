"""`flow reconcile --provider deepgram`: the ledger against Deepgram's usage breakdown.

The ledger holds a week of March 2025 as Flow meters Deepgram: live transcription
(``nova-3``) reported a few times a call, speech (``aura-2-thalia-en``) a few times a
call. Deepgram counts one request per streamed session (a call's connection) and hours
of audio; the fake of its management API serves the same week, and the two agree; a
copy with one difference of each kind makes exactly those lines differ.
"""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from supabase import AsyncClient

from flow import localstack
from flow.db import keys as keys_repo
from flow.db import threads as threads_repo
from flow.db.usage import record_usage_events
from flow.metering.events import UsageEvent, UsageKind
from tests.fakes.deepgram_usage_server import FakeDeepgramUsage, breakdown
from tests.integration.test_cli_usage import flow_cli

FIRST = date(2025, 3, 1)
WEEK = ("--start", "2025-03-01", "--end", "2025-03-07")
STT, TTS = "nova-3", "aura-2-thalia-en"
REPORTS = 3  # usage reports per call and service
SECONDS = Decimal(36)  # per transcription report: a hundredth of an hour
CHARACTERS = 120  # per speech report
Figures = dict[str, dict[str, dict[str, float]]]


@pytest.fixture(scope="module")
async def week(sb: AsyncClient) -> Figures:
    """The ledger's week, and Deepgram's figures for it: ``{day: {model: units}}``."""
    key, _ = await keys_repo.create_local_key(sb, f"dg-{uuid.uuid4().hex[:8]}")
    figures: Figures = {}
    events: list[UsageEvent] = []
    for n in range(7):
        day = FIRST + timedelta(days=n)
        calls = 1 + n % 3
        for c in range(calls):
            at = datetime(day.year, day.month, day.day, 9 + c, tzinfo=UTC)
            thread = await threads_repo.create_thread(
                sb, api_key_id=key["id"], transport="simulated"
            )
            for r in range(REPORTS):
                common = {
                    "workflow_thread_id": thread["workflow_thread_id"],
                    "api_key_id": key["id"],
                    "occurred_at": at + timedelta(seconds=40 * r),
                    "provider": "deepgram",
                }
                events.append(
                    UsageEvent(**common, kind=UsageKind.STT, model=STT, audio_seconds=SECONDS)
                )
                events.append(
                    UsageEvent(**common, kind=UsageKind.TTS, model=TTS, characters=CHARACTERS)
                )
        figures[day.isoformat()] = {
            STT: {"hours": calls * REPORTS * 0.01, "requests": calls},
            TTS: {"tts_characters": calls * REPORTS * CHARACTERS, "requests": calls},
        }
    await record_usage_events(sb, events)
    return figures


def answers_file(tmp_path: Path, figures: Figures) -> list[str]:
    """``--usage-file`` of the week's answers, a day each, as they would be saved."""
    path = tmp_path / "breakdown.json"
    days = [FIRST + timedelta(days=n) for n in range(7)]
    path.write_text("".join(json.dumps(breakdown(d, d, figures)) + "\n" for d in days))
    return ["--usage-file", str(path)]


def flagged(report: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    return {
        (line["day"], line["model"], line["unit"], line["diagnosis"])
        for line in report["lines"]
        if line["diagnosis"] != "ok"
    }


async def test_a_week_of_deepgram_usage_agrees_through_its_api(
    stack: localstack.StackInfo, week: Figures
) -> None:
    fake = FakeDeepgramUsage(week).start()
    try:
        env = {"DEEPGRAM_ADMIN_KEY": fake.key, "DEEPGRAM_ADMIN_BASE_URL": fake.base_url}
        args = ("reconcile", "--provider", "deepgram", *WEEK, "--project", fake.project)
        out = flow_cli(stack, *args, "--json", **env)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr
        report = json.loads(out.stdout)
        assert report["agrees"] and report["summary"]["differences"] == 0
        assert "whole project proj-dg" in report["vendor_scope"]
        assert len(fake.requests) == 7  # a day each
        assert {q["start"][0] for _, q in fake.requests} == {
            (FIRST + timedelta(days=n)).isoformat() for n in range(7)
        }
        lines = {(ln["day"], ln["model"], ln["unit"]): ln for ln in report["lines"]}
        # Three calls on the 3rd: three sessions each way, nine reports each way.
        assert lines[("2025-03-03", STT, "requests")]["ledger"] == "3"
        assert lines[("2025-03-03", STT, "seconds")]["ledger"] == "324"
        assert lines[("2025-03-03", TTS, "characters")]["vendor"] == "1080"
        assert {ln["endpoint"] for ln in report["lines"]} == {"listen", "speak"}

        table = flow_cli(stack, *args, **env)
        assert table.returncode == 0, table.stderr
        assert "against Deepgram's usage" in table.stdout
        assert "Deepgram gave no costs" in table.stdout and "everything agrees" in table.stdout
    finally:
        fake.stop()


async def test_one_difference_of_each_kind_is_flagged_on_its_line(
    stack: localstack.StackInfo, week: Figures, tmp_path: Path
) -> None:
    figures = copy.deepcopy(week)
    figures["2025-03-02"][STT]["hours"] += 0.01  # 36 s more than metered: units
    figures["2025-03-05"][TTS]["requests"] += 1  # a session Flow did not make: coverage
    out = flow_cli(
        stack, "reconcile", "--provider", "deepgram", *WEEK, "--json",
        *answers_file(tmp_path, figures),
    )  # fmt: skip
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr
    report = json.loads(out.stdout)
    assert flagged(report) == {
        ("2025-03-02", STT, "seconds", "units"),
        ("2025-03-05", TTS, "requests", "coverage"),
    }
    # The same answers unchanged agree.
    same = flow_cli(
        stack, "reconcile", "--provider", "deepgram", *WEEK, *answers_file(tmp_path, week)
    )
    assert same.returncode == 0, same.stdout[-2000:]


async def test_a_refused_key_is_an_error_not_a_verdict(
    stack: localstack.StackInfo, week: Figures
) -> None:
    fake = FakeDeepgramUsage(week).start()
    try:
        env = {"DEEPGRAM_ADMIN_KEY": "dg-wrong-key", "DEEPGRAM_ADMIN_BASE_URL": fake.base_url}
        out = flow_cli(stack, "reconcile", "--provider", "deepgram", *WEEK, "--project",
                       fake.project, **env)  # fmt: skip
        assert out.returncode == 2
        assert "answered 401: Invalid credentials." in out.stderr
        assert "dg-wrong-key" not in out.stderr + out.stdout
        nobody = flow_cli(stack, "reconcile", "--provider", "deepgram", *WEEK, **env)
        assert nobody.returncode == 2 and "DEEPGRAM_PROJECT_ID" in nobody.stderr
    finally:
        fake.stop()
