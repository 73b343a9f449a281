"""Makes the recorded OpenAI organization usage the reconciliation tests compare with the
ledger: January 2025 of two projects, as OpenAI's Usage and Costs APIs answer it.

Run once (``python tests/recordings/openai_usage/make.py``); the JSON is committed. Each
file holds an endpoint's pages one after another, seven daily buckets a page (the API's
default ``limit``), as fetched with ``bucket_width=1d`` and ``group_by`` model (line item
for costs) and project_id, in the shape OpenAI's API reference documents: ``{"object":
"page", "data": [{"object": "bucket", "start_time", "end_time", "results": [...]}],
"has_more", "next_page"}``.

``proj_flow`` is the project Flow's calls run in: within a bucket every request of a
model has the same counts, so the ledger the tests derive from these figures splits them
exactly (one event a request). ``proj_other`` is another app in the same organization
(gpt-4o, some tts-1). Costs are the figures times the list rates in :data:`RATES`, USD.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MONTH = [date(2025, 1, 1) + timedelta(days=i) for i in range(31)]
PAGE_BUCKETS = 7
M = Decimal(1_000_000)
# USD per 1M tokens (characters for tts-1), per second for whisper-1.
RATES: dict[str, dict[str, Decimal]] = {
    "gpt-4o-mini-2024-07-18": {
        "input": Decimal("0.15"),
        "cache_read": Decimal("0.075"),
        "output": Decimal("0.60"),
    },
    "gpt-realtime-2025-08-28": {
        "input": Decimal("4"),
        "cache_read": Decimal("0.40"),
        "output": Decimal("16"),
        "input_audio": Decimal("32"),
        "output_audio": Decimal("64"),
    },
    "gpt-4o-2024-08-06": {
        "input": Decimal("2.50"),
        "cache_read": Decimal("1.25"),
        "output": Decimal("10"),
    },
    "tts-1": {"per_character": Decimal("0.000015")},
    "whisper-1": {"per_second": Decimal("0.0001")},
}


def completions(
    rnd: random.Random, model: str, project: str, n: int, audio: bool
) -> dict[str, Any]:
    text_in = rnd.randint(300, 2500)
    cached = rnd.randint(0, text_in // 2)
    audio_in = rnd.randint(2000, 9000) if audio else 0
    text_out = rnd.randint(20, 300)
    audio_out = rnd.randint(500, 3000) if audio else 0
    return {
        "object": "organization.usage.completions.result",
        "input_tokens": n * (text_in + audio_in),
        "output_tokens": n * (text_out + audio_out),
        "input_cached_tokens": n * cached,
        "input_audio_tokens": n * audio_in,
        "output_audio_tokens": n * audio_out,
        "num_model_requests": n,
        "project_id": project,
        "user_id": None,
        "api_key_id": None,
        "model": model,
        "batch": None,
        "service_tier": None,
    }


def completion_costs(result: dict[str, Any]) -> dict[str, Decimal]:
    rates = RATES[result["model"]]
    audio_in, audio_out = result["input_audio_tokens"], result["output_audio_tokens"]
    cached = result["input_cached_tokens"]
    uncached_text = result["input_tokens"] - cached - audio_in
    text_out = result["output_tokens"] - audio_out
    return {
        "input": (
            uncached_text * rates["input"]
            + cached * rates["cache_read"]
            + audio_in * rates.get("input_audio", Decimal(0))
        )
        / M,
        "output": (text_out * rates["output"] + audio_out * rates.get("output_audio", Decimal(0)))
        / M,
    }


def voice(kind: str, model: str, project: str, n: int, each: int) -> dict[str, Any]:
    unit = "characters" if kind == "audio_speeches" else "seconds"
    return {
        "object": f"organization.usage.{kind}.result",
        unit: n * each,
        "num_model_requests": n,
        "project_id": project,
        "user_id": None,
        "api_key_id": None,
        "model": model,
    }


def cost(value: Decimal, line_item: str, project: str) -> dict[str, Any]:
    return {
        "object": "organization.costs.result",
        "amount": {"value": float(round(value, 10)), "currency": "usd"},
        "line_item": line_item,
        "project_id": project,
    }


def month() -> dict[str, list[tuple[date, list[dict[str, Any]]]]]:
    rnd = random.Random(20250101)
    out: dict[str, list[tuple[date, list[dict[str, Any]]]]] = {
        "completions": [],
        "audio_speeches": [],
        "audio_transcriptions": [],
        "costs": [],
    }
    for day in MONTH:
        done: list[dict[str, Any]] = []
        spoken: list[dict[str, Any]] = []
        heard: list[dict[str, Any]] = []
        costs: list[dict[str, Any]] = []
        runs = [("gpt-4o-mini-2024-07-18", "proj_flow", rnd.randint(2, 6), False)]
        if day.day % 3 == 0:
            runs.append(("gpt-realtime-2025-08-28", "proj_flow", rnd.randint(1, 3), True))
        if day.day % 2 == 0:
            runs.append(("gpt-4o-2024-08-06", "proj_other", rnd.randint(1, 4), False))
        for model, project, n, audio in runs:
            result = completions(rnd, model, project, n, audio)
            done.append(result)
            for part, value in completion_costs(result).items():
                costs.append(cost(value, f"{model}, {part}", project))
        speakers = [("proj_flow", rnd.randint(2, 8))]
        if day.day % 5 == 0:
            speakers.append(("proj_other", rnd.randint(1, 3)))
        for project, n in speakers:
            result = voice("audio_speeches", "tts-1", project, n, rnd.randint(40, 300))
            spoken.append(result)
            costs.append(
                cost(result["characters"] * RATES["tts-1"]["per_character"], "tts-1", project)
            )
        n = rnd.randint(2, 8)
        result = voice("audio_transcriptions", "whisper-1", "proj_flow", n, rnd.randint(2, 20))
        heard.append(result)
        costs.append(
            cost(result["seconds"] * RATES["whisper-1"]["per_second"], "whisper-1", "proj_flow")
        )
        for name, results in (
            ("completions", done),
            ("audio_speeches", spoken),
            ("audio_transcriptions", heard),
            ("costs", costs),
        ):
            out[name].append((day, results))
    return out


def pages(buckets: list[tuple[date, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    out = []
    for at in range(0, len(buckets), PAGE_BUCKETS):
        chunk = buckets[at : at + PAGE_BUCKETS]
        more = at + PAGE_BUCKETS < len(buckets)
        out.append(
            {
                "object": "page",
                "data": [
                    {
                        "object": "bucket",
                        "start_time": int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()),
                        "end_time": int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp())
                        + 86_400,
                        "results": results,
                    }
                    for d, results in chunk
                ],
                "has_more": more,
                "next_page": f"page_{at + PAGE_BUCKETS:04d}" if more else None,
            }
        )
    return out


if __name__ == "__main__":
    for name, buckets in month().items():
        text = "".join(json.dumps(page, indent=2) + "\n" for page in pages(buckets))
        (HERE / f"{name}.json").write_text(text)
