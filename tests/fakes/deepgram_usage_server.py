"""A local Deepgram management API, the part `flow reconcile --provider deepgram` reads:
``GET /v1/projects/{project_id}/usage/breakdown`` with ``Authorization: Token <key>``
(401 otherwise, 404 for another project), ``start`` and ``end`` (``YYYY-MM-DD``, both
included) and ``grouping=models``, answering the documented shape: ``start``, ``end``,
``resolution`` and one result per model with ``hours``, ``total_hours``,
``agent_hours``, ``tokens_in``, ``tokens_out``, ``tts_characters``, ``requests`` and its
``grouping``. It serves per-day figures given as ``{day: {model: {unit: value}}}``.

Every request's path and query are kept in ``requests``.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from tests.fakes.threaded_http import ThreadedServer

UNITS = ("hours", "total_hours", "agent_hours", "tokens_in", "tokens_out", "tts_characters")


def breakdown(
    first: date, last: date, figures: dict[str, dict[str, dict[str, float]]]
) -> dict[str, Any]:
    """The answer for the days [first, last], summed per model."""
    per_model: dict[str, dict[str, float]] = {}
    day = first
    while day <= last:
        for model, units in figures.get(day.isoformat(), {}).items():
            into = per_model.setdefault(model, dict.fromkeys((*UNITS, "requests"), 0))
            for unit, value in units.items():
                into[unit] += value
        day += timedelta(days=1)
    results = []
    for model, units in sorted(per_model.items()):
        results.append(
            {
                **{unit: units[unit] for unit in UNITS},
                "total_hours": units["hours"],
                "requests": int(units["requests"]),
                "grouping": {
                    "start": first.isoformat(),
                    "end": last.isoformat(),
                    "accessor": None,
                    "endpoint": None,
                    "feature_set": None,
                    "models": model,
                    "method": None,
                    "tags": None,
                    "deployment": None,
                },
            }
        )
    return {
        "start": first.isoformat(),
        "end": last.isoformat(),
        "resolution": {"units": "day", "amount": 1},
        "results": results,
    }


class FakeDeepgramUsage(ThreadedServer):
    def __init__(
        self,
        figures: dict[str, dict[str, dict[str, float]]],
        *,
        key: str = "dg-usage-test",
        project: str = "proj-dg",
    ) -> None:
        self.figures = figures
        self.key = key
        self.project = project
        self.requests: list[tuple[str, dict[str, list[str]]]] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def answer(self, path: str, query: dict[str, list[str]], auth: str) -> tuple[int, Any]:
        self.requests.append((path, query))
        if auth != f"Token {self.key}":
            return 401, {"err_code": "INVALID_AUTH", "err_msg": "Invalid credentials."}
        if path != f"/v1/projects/{self.project}/usage/breakdown":
            return 404, {"err_code": "NOT_FOUND", "err_msg": "Project not found."}
        if query.get("grouping") != ["models"]:
            return 400, {"err_code": "BAD_REQUEST", "err_msg": "this fake groups by models"}
        try:
            first = date.fromisoformat(query["start"][0])
            last = date.fromisoformat(query["end"][0])
        except (KeyError, ValueError):
            return 400, {"err_code": "BAD_REQUEST", "err_msg": "start and end: YYYY-MM-DD"}
        return 200, breakdown(first, last, self.figures)

    def start(self) -> FakeDeepgramUsage:
        self.serve_get(self.answer)
        return self
