"""What OpenAI says it served: its organization Usage and Costs APIs, read from the API
with an admin key or from files holding their JSON answers.

Endpoints (``GET``, under ``OPENAI_ADMIN_BASE_URL``, default ``https://api.openai.com/v1``):

- ``/organization/usage/completions``: per bucket and model, ``num_model_requests``,
  ``input_tokens`` (cached and audio included), ``input_cached_tokens``,
  ``output_tokens``, ``input_audio_tokens``, ``output_audio_tokens``;
- ``/organization/usage/audio_speeches``: ``num_model_requests``, ``characters``;
- ``/organization/usage/audio_transcriptions``: ``num_model_requests``, ``seconds``;
- ``/organization/costs``: ``amount`` (``value``, ``currency``) per ``line_item``
  (``"gpt-4o-mini-2024-07-18, input"``: the model before the comma).

Each is asked for daily buckets (``bucket_width=1d``) between ``start_time`` and
``end_time`` (Unix seconds, end exclusive), grouped by model (line item for costs) and
project, 31 buckets a page, following ``next_page`` while ``has_more``; ``--project``
adds ``project_ids``. An answer is a page: ``{"object": "page", "data": [{"object":
"bucket", "start_time", "end_time", "results": [...]}], "has_more", "next_page"}`` (the
reference names the list ``result``; both are read). A file holds such pages one after
another (as they were fetched) or a JSON list of them; the kind of each result is its
``object``.

Failure behaviour: an answer other than 200, an unreachable API, a timeout
(``OPENAI_ADMIN_TIMEOUT_SECONDS`` per request) or something that is not a page raises
:class:`VendorError` with the endpoint and status (never the key); nothing is retried,
the command is meant to run again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx

from flow.config import Settings

DEFAULT_BASE_URL = "https://api.openai.com/v1"
MAX_PAGES = 1000  # per endpoint: a month is 1 page at 31 buckets a page
DAY_SECONDS = 86_400


class Endpoint(StrEnum):
    """What a vendor reports usage under: OpenAI's three Usage API endpoints, and
    Deepgram's live transcription (``listen``) and speech (``speak``)."""

    COMPLETIONS = "completions"
    SPEECHES = "audio_speeches"
    TRANSCRIPTIONS = "audio_transcriptions"
    LISTEN = "listen"
    SPEAK = "speak"


OPENAI_ENDPOINTS = (Endpoint.COMPLETIONS, Endpoint.SPEECHES, Endpoint.TRANSCRIPTIONS)
RESULT_OBJECTS = {f"organization.usage.{e.value}.result": e for e in OPENAI_ENDPOINTS}
COST_OBJECT = "organization.costs.result"

# The vendor's field behind each unit, per endpoint (units in the order they are shown).
UNIT_FIELDS: dict[Endpoint, dict[str, str]] = {
    Endpoint.COMPLETIONS: {
        "requests": "num_model_requests",
        "input_tokens": "input_tokens",
        "cached_tokens": "input_cached_tokens",
        "output_tokens": "output_tokens",
        "input_audio_tokens": "input_audio_tokens",
        "output_audio_tokens": "output_audio_tokens",
    },
    Endpoint.SPEECHES: {"requests": "num_model_requests", "characters": "characters"},
    Endpoint.TRANSCRIPTIONS: {"requests": "num_model_requests", "seconds": "seconds"},
    # Deepgram's usage breakdown: its hours become seconds as they are read.
    Endpoint.LISTEN: {"requests": "requests", "seconds": "hours"},
    Endpoint.SPEAK: {"requests": "requests", "characters": "tts_characters"},
}
PATHS: dict[str, str] = {
    **{e: f"/organization/usage/{e.value}" for e in OPENAI_ENDPOINTS},
    "costs": "/organization/costs",
}


class VendorError(Exception):
    """The vendor's figures could not be had (the message says which endpoint and why)."""


@dataclass
class VendorUsage:
    """A vendor's figures over the window.

    Parameters:
        usage: per (day, endpoint, model as the vendor names it), each unit's figure; a
            unit the vendor did not report is absent.
        costs: USD per (day, model of the line item).
        has_costs: whether any costs page was read (rates are compared only then).
        projects: the project ids the figures came from.
        unattributed_cost_usd: cost in results without a line item (not comparable).
    """

    usage: dict[tuple[str, Endpoint, str], dict[str, Decimal]] = field(default_factory=dict)
    costs: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    has_costs: bool = False
    projects: set[str] = field(default_factory=set)
    unattributed_cost_usd: Decimal = Decimal(0)


def read_pages(
    pages: Iterable[Any], start: date, end: date, project: str | None = None
) -> VendorUsage:
    """Sum the pages' results per UTC day in [start, end], endpoint and model (only
    ``project``'s when given)."""
    out = VendorUsage()
    for page in pages:
        if not isinstance(page, dict) or not isinstance(page.get("data"), list):
            raise VendorError("not a usage page (an object with a data list of buckets)")
        for bucket in page["data"]:
            day = _day(bucket)
            if not start <= day <= end:
                continue
            results = bucket.get("results", bucket.get("result")) or []
            for result in results:
                if _in_project(result, project, out):
                    _add(out, day.isoformat(), result)
    return out


def _day(bucket: Any) -> date:
    try:
        begin, finish = int(bucket["start_time"]), int(bucket["end_time"])
    except (KeyError, TypeError, ValueError):
        raise VendorError("a bucket without start_time and end_time") from None
    if finish - begin != DAY_SECONDS or begin % DAY_SECONDS:
        raise VendorError("buckets must be whole UTC days (bucket_width=1d)")
    return datetime.fromtimestamp(begin, UTC).date()


def _in_project(result: dict[str, Any], project: str | None, out: VendorUsage) -> bool:
    if result.get("project_id"):
        out.projects.add(str(result["project_id"]))
    if project is None:
        return True
    if "project_id" not in result:
        raise VendorError(
            "these results carry no project_id (fetched without group_by=project_id): "
            "they cannot be filtered by project"
        )
    return result["project_id"] == project


def _add(out: VendorUsage, day: str, result: dict[str, Any]) -> None:
    kind = result.get("object")
    if kind == COST_OBJECT:
        out.has_costs = True
        amount = result.get("amount") or {}
        if str(amount.get("currency") or "usd").lower() != "usd":
            raise VendorError(f"a cost in {amount.get('currency')!r}: only usd is compared")
        cost = Decimal(str(amount.get("value") or 0))
        line_item = result.get("line_item")
        if not line_item:
            out.unattributed_cost_usd += cost
            return
        item_model = str(line_item).split(",", 1)[0].strip()
        out.costs[(day, item_model)] = out.costs.get((day, item_model), Decimal(0)) + cost
        return
    endpoint = RESULT_OBJECTS.get(str(kind))
    if endpoint is None:
        return  # embeddings, images...: Flow meters none of them
    model = result.get("model")
    if not model:
        raise VendorError(f"{kind} results without a model: fetch them with group_by=model")
    figures = out.usage.setdefault((day, endpoint, str(model)), {})
    for unit, name in UNIT_FIELDS[endpoint].items():
        value = result.get(name)
        if value is not None:
            figures[unit] = figures.get(unit, Decimal(0)) + Decimal(str(value))


def load_files(paths: Sequence[Path]) -> list[Any]:
    """The pages in files of saved answers: pages one after another, or a list of them."""
    pages: list[Any] = []
    decoder = json.JSONDecoder(parse_float=Decimal)
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise VendorError(f"cannot read {path}: {exc.strerror}") from None
        at = 0
        while True:
            while at < len(text) and text[at].isspace():
                at += 1
            if at == len(text):
                break
            try:
                doc, at = decoder.raw_decode(text, at)
            except json.JSONDecodeError as exc:
                raise VendorError(f"{path} is not JSON at line {exc.lineno}: {exc.msg}") from None
            pages.extend(doc if isinstance(doc, list) else [doc])
    return pages


async def fetch_pages(
    settings: Settings, start: date, end: date, project: str | None = None
) -> list[Any]:
    """Every page of the four endpoints for the UTC days [start, end]."""
    key = settings.openai_admin_key.get_secret_value()
    if not key:
        raise VendorError("OPENAI_ADMIN_KEY is not set (or give --usage-file)")
    base = settings.openai_admin_base_url or DEFAULT_BASE_URL
    window = [
        ("start_time", str(_unix(start))),
        ("end_time", str(_unix(end + timedelta(days=1)))),
        ("bucket_width", "1d"),
        ("limit", "31"),
    ]
    if project:
        window.append(("project_ids[]", project))
    pages: list[Any] = []
    async with httpx.AsyncClient(timeout=settings.openai_admin_timeout_seconds) as http:
        for endpoint, path in PATHS.items():
            group_by = ("line_item" if endpoint == "costs" else "model", "project_id")
            params = window + [("group_by[]", g) for g in group_by]
            pages += await _all_pages(http, base + path, params, key)
    return pages


async def _all_pages(
    http: httpx.AsyncClient, url: str, params: list[tuple[str, str]], key: str
) -> list[Any]:
    pages: list[Any] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        query = params + ([("page", cursor)] if cursor else [])
        try:
            answer = await http.get(
                url, params=tuple(query), headers={"Authorization": f"Bearer {key}"}
            )
        except httpx.HTTPError as exc:
            raise VendorError(f"{url} could not be reached ({type(exc).__name__})") from None
        if answer.status_code != 200:
            raise VendorError(f"{url} answered {answer.status_code}: {_message(answer)}")
        try:
            page = answer.json(parse_float=Decimal)
        except ValueError:
            raise VendorError(f"{url} answered something that is not JSON") from None
        pages.append(page)
        cursor = page.get("next_page") if isinstance(page, dict) else None
        if not (isinstance(page, dict) and page.get("has_more") and cursor):
            return pages
    raise VendorError(f"{url} had more than {MAX_PAGES} pages")


def _message(answer: httpx.Response) -> str:
    try:
        error = answer.json().get("error") or {}
        return str(error.get("message") or error)[:200]
    except (ValueError, AttributeError):
        return answer.reason_phrase


def _unix(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
