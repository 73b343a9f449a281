"""What Deepgram says it served: its project usage breakdown, read from the API with a
key that may read usage (``usage:read``) or from files holding its JSON answers.

Endpoint (``GET``, under ``DEEPGRAM_ADMIN_BASE_URL``, default
``https://api.deepgram.com/v1``, ``Authorization: Token <key>``):
``/projects/{project_id}/usage/breakdown?start=DAY&end=DAY&grouping=models``, asked once
per UTC day of the window. An answer is ``{"start", "end", "resolution", "results":
[{"hours", "total_hours", "agent_hours", "tokens_in", "tokens_out", "tts_characters",
"requests", "grouping": {"start", "end", "models", ...}}]}``; each result is one model's
usage that day. A model named ``aura...`` is speech (``speak``: ``tts_characters``,
``requests``); any other is live transcription (``listen``: ``hours``, read as seconds,
and ``requests``). A file holds such answers one after another or a JSON list of them,
each covering one day (``start`` equal to ``end``).

The key is ``DEEPGRAM_ADMIN_KEY`` (``DEEPGRAM_API_KEY`` when unset) and the project
``--project`` or ``DEEPGRAM_PROJECT_ID``. Deepgram reports no costs here: rates are not
compared.

Failure behaviour: an answer other than 200, an unreachable API, a timeout
(``DEEPGRAM_ADMIN_TIMEOUT_SECONDS`` per request) or an answer that is not a breakdown
raises :class:`VendorError` with the day and status (never the key); nothing is
retried.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

import httpx

from flow.config import Settings
from flow.reconcile.openai import UNIT_FIELDS, Endpoint, VendorError, VendorUsage

DEFAULT_BASE_URL = "https://api.deepgram.com/v1"
SECONDS_PER_HOUR = Decimal(3600)


def endpoint_of(model: str) -> Endpoint:
    """Deepgram's voices (``aura-2-thalia-en``) speak; every other model listens."""
    return Endpoint.SPEAK if model.strip().lower().startswith("aura") else Endpoint.LISTEN


def read_breakdowns(answers: Iterable[Any], start: date, end: date) -> VendorUsage:
    """Sum the answers' results per UTC day in [start, end] and model."""
    out = VendorUsage()
    for answer in answers:
        if not isinstance(answer, dict) or not isinstance(answer.get("results"), list):
            raise VendorError("not a usage breakdown (an object with a results list)")
        day = _day(answer)
        if not start <= day <= end:
            continue
        for result in answer["results"]:
            _add(out, day.isoformat(), result)
    return out


def _day(answer: dict[str, Any]) -> date:
    try:
        first = date.fromisoformat(str(answer["start"])[:10])
        last = date.fromisoformat(str(answer["end"])[:10])
    except (KeyError, ValueError):
        raise VendorError("a breakdown without its start and end days") from None
    if first != last:
        raise VendorError("each breakdown must cover one day (start=end): fetch them day by day")
    return first


def _add(out: VendorUsage, day: str, result: Any) -> None:
    grouping = result.get("grouping") if isinstance(result, dict) else None
    model = (grouping or {}).get("models") if isinstance(grouping, dict) else None
    if not model:
        raise VendorError("breakdown results without a model: fetch them with grouping=models")
    endpoint = endpoint_of(str(model))
    figures = out.usage.setdefault((day, endpoint, str(model)), {})
    for unit, name in UNIT_FIELDS[endpoint].items():
        value = result.get(name)
        if value is None:
            continue
        try:
            figure = Decimal(str(value))
        except InvalidOperation:
            raise VendorError(f"{name} is not a number: {value!r}") from None
        if unit == "seconds":
            figure *= SECONDS_PER_HOUR
        figures[unit] = figures.get(unit, Decimal(0)) + figure


async def fetch_breakdowns(
    settings: Settings, start: date, end: date, project: str | None = None
) -> list[Any]:
    """The breakdown by model of every UTC day in [start, end]."""
    key = (
        settings.deepgram_admin_key.get_secret_value()
        or settings.deepgram_api_key.get_secret_value()
    )
    if not key:
        raise VendorError(
            "DEEPGRAM_ADMIN_KEY (or DEEPGRAM_API_KEY) is not set (or give --usage-file)"
        )
    project = project or settings.deepgram_project_id
    if not project:
        raise VendorError("which Deepgram project? give --project or set DEEPGRAM_PROJECT_ID")
    days = (end - start).days + 1  # at most MAX_REPORT_DAYS: `flow reconcile` checks
    base = settings.deepgram_admin_base_url or DEFAULT_BASE_URL
    url = f"{base}/projects/{quote(project, safe='')}/usage/breakdown"
    answers: list[Any] = []
    async with httpx.AsyncClient(timeout=settings.deepgram_admin_timeout_seconds) as http:
        for n in range(days):
            day = (start + timedelta(days=n)).isoformat()
            params = {"start": day, "end": day, "grouping": "models"}
            try:
                answer = await http.get(
                    url, params=params, headers={"Authorization": f"Token {key}"}
                )
            except httpx.HTTPError as exc:
                raise VendorError(
                    f"Deepgram's usage breakdown could not be reached ({type(exc).__name__})"
                ) from None
            if answer.status_code != 200:
                raise VendorError(
                    f"Deepgram's usage breakdown for {day} answered {answer.status_code}: "
                    f"{_message(answer)}"
                )
            try:
                answers.append(answer.json(parse_float=Decimal))
            except ValueError:
                raise VendorError("Deepgram answered something that is not JSON") from None
    return answers


def _message(answer: httpx.Response) -> str:
    try:
        body = answer.json()
        return str(body.get("err_msg") or body.get("message") or body)[:200]
    except (ValueError, AttributeError):
        return answer.reason_phrase
