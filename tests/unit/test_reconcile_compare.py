"""How ledger and vendor figures are lined up and judged, without a database: names,
tolerances, units a vendor leaves out, costs for things Flow never meters, and pages
that cannot be compared."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from flow.reconcile.compare import Diagnosis, Line, Tolerance, family, reconcile
from flow.reconcile.openai import VendorError, read_pages

DAY = date(2025, 1, 2)
START = 1735776000  # 2025-01-02 00:00 UTC


def page(*results: dict[str, Any], start: int = START, end: int = START + 86_400) -> dict:
    return {"object": "page", "data": [{"start_time": start, "end_time": end, "results": results}]}


def ledger_row(kind: str, model: str, **figures: Any) -> dict[str, Any]:
    row = dict.fromkeys(
        (
            "input_tokens",
            "cache_read_tokens",
            "output_tokens",
            "input_audio_tokens",
            "output_audio_tokens",
            "characters",
        ),
        0,
    )
    return {
        "day": "2025-01-02",
        "kind": kind,
        "model": model,
        "audio_seconds": "0",
        "cost_usd": "0",
        "requests": 1,
        **row,
        **figures,
    }


def compare(rows: list[dict[str, Any]], *results: dict[str, Any]) -> list[Line]:
    return reconcile(rows, read_pages([page(*results)], DAY, DAY), Tolerance())


def differing(lines: list[Line]) -> set[tuple[str, str, Diagnosis]]:
    return {(ln.model, ln.unit, ln.diagnosis) for ln in lines if ln.diagnosis != Diagnosis.OK}


def test_dated_snapshots_meet_the_names_asked_for() -> None:
    assert family("gpt-4o-mini-2024-07-18") == family("gpt-4o-mini") == "gpt-4o-mini"
    assert family("gpt-realtime-2025-08-28") == "gpt-realtime"
    assert family("whisper-1") == "whisper-1" and family("tts-1-hd") == "tts-1-hd"


def test_seconds_agree_within_a_second_a_request() -> None:
    rows = [ledger_row("stt", "whisper-1", requests=2, audio_seconds="10.4")]
    heard = {
        "object": "organization.usage.audio_transcriptions.result",
        "model": "whisper-1",
        "num_model_requests": 2,
    }
    assert differing(compare(rows, {**heard, "seconds": 12})) == set()
    assert differing(compare(rows, {**heard, "seconds": 13})) == {
        ("whisper-1", "seconds", Diagnosis.UNITS)
    }


def test_a_unit_the_vendor_leaves_out_is_shown_but_not_judged() -> None:
    rows = [ledger_row("llm", "gpt-4o-mini", input_tokens=100, output_tokens=10)]
    done = {
        "object": "organization.usage.completions.result",
        "model": "gpt-4o-mini-2024-07-18",
        "num_model_requests": 1,
        "input_tokens": 100,
        "output_tokens": 10,
    }
    lines = compare(rows, done)
    assert differing(lines) == set()
    [audio] = [ln for ln in lines if ln.unit == "input_audio_tokens"]
    assert audio.vendor is None and audio.difference is None


def test_a_cost_for_something_flow_never_meters_is_coverage() -> None:
    rows = [ledger_row("tts", "tts-1", characters=100, cost_usd="0.0015")]
    spoken = {
        "object": "organization.usage.audio_speeches.result",
        "model": "tts-1",
        "num_model_requests": 1,
        "characters": 100,
    }
    costs = [
        {
            "object": "organization.costs.result",
            "amount": {"value": value, "currency": "usd"},
            "line_item": line_item,
        }
        for line_item, value in (("tts-1", "0.0015"), ("web_search", "2.50"))
    ]
    assert differing(compare(rows, spoken, *costs)) == {
        ("web_search", "cost_usd", Diagnosis.COVERAGE)
    }


def test_pages_that_cannot_be_compared_are_refused() -> None:
    with pytest.raises(VendorError, match="whole UTC days"):
        read_pages([page(start=START, end=START + 3600)], DAY, DAY)
    no_project = {
        "object": "organization.usage.audio_speeches.result",
        "model": "tts-1",
        "num_model_requests": 1,
        "characters": 5,
    }
    with pytest.raises(VendorError, match="no project_id"):
        read_pages([page(no_project)], DAY, DAY, project="proj_flow")
    with pytest.raises(VendorError, match="not a usage page"):
        read_pages([{"error": {"message": "nope"}}], DAY, DAY)
