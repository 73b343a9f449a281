"""A local OpenAI organization Usage and Costs API for tests of `flow reconcile`.

It serves recorded daily buckets (``tests/recordings/openai_usage``) the way the API
reference documents the endpoints:

- ``GET /v1/organization/usage/{completions,audio_speeches,audio_transcriptions}`` and
  ``GET /v1/organization/costs`` with ``Authorization: Bearer <admin key>`` (401 with an
  ``error`` object otherwise);
- ``start_time`` (required) and ``end_time`` in Unix seconds, end exclusive;
  ``bucket_width`` ``1d`` only (the recordings are daily; anything else is a 400);
- ``group_by`` (as ``group_by`` or ``group_by[]``, repeated or comma-separated): the
  results are summed per the fields named, the others answered ``null``;
  ``project_ids`` filters;
- pages of ``limit`` buckets (default 7, at most 31, or :attr:`page_size` if smaller),
  ``has_more`` and an opaque ``next_page`` cursor that ``page`` takes back.

Every request's path and query are kept in ``requests``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from tests.fakes.threaded_http import ThreadedServer

RECORDINGS = Path(__file__).resolve().parents[1] / "recordings" / "openai_usage"
ENDPOINTS = {
    "/v1/organization/usage/completions": "completions",
    "/v1/organization/usage/audio_speeches": "audio_speeches",
    "/v1/organization/usage/audio_transcriptions": "audio_transcriptions",
    "/v1/organization/costs": "costs",
}
GROUPABLE = ("project_id", "user_id", "api_key_id", "model", "batch", "service_tier", "line_item")


def load_pages(path: Path) -> list[dict[str, Any]]:
    """The pages of a recording: JSON documents one after another."""
    text, decoder, at, pages = path.read_text(), json.JSONDecoder(), 0, []
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            return pages
        page, at = decoder.raw_decode(text, at)
        pages.append(page)


def recordings(directory: Path = RECORDINGS) -> dict[str, list[dict[str, Any]]]:
    """Each endpoint's recorded pages."""
    return {name: load_pages(directory / f"{name}.json") for name in ENDPOINTS.values()}


def regroup(results: list[dict[str, Any]], group_by: list[str]) -> list[dict[str, Any]]:
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for result in results:
        key = tuple(result.get(name) for name in group_by)
        if key not in groups:
            groups[key] = {
                k: None if k in GROUPABLE and k not in group_by else copy.deepcopy(v)
                for k, v in result.items()
            }
            continue
        into = groups[key]
        for k, v in result.items():
            if k == "amount":
                into["amount"]["value"] += v["value"]
            elif k not in GROUPABLE and isinstance(v, int | float) and not isinstance(v, bool):
                into[k] = (into.get(k) or 0) + v
    return list(groups.values())


class FakeOpenAIUsage(ThreadedServer):
    def __init__(
        self,
        pages: dict[str, list[dict[str, Any]]] | None = None,
        *,
        admin_key: str = "sk-admin-test",
        page_size: int = 31,
    ) -> None:
        pages = pages if pages is not None else recordings()
        self.buckets = {
            name: [bucket for page in pages.get(name, []) for bucket in page["data"]]
            for name in ENDPOINTS.values()
        }
        self.admin_key = admin_key
        self.page_size = page_size
        self.requests: list[tuple[str, dict[str, list[str]]]] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def answer(self, path: str, query: dict[str, list[str]], auth: str) -> tuple[int, Any]:
        self.requests.append((path, query))
        if auth != f"Bearer {self.admin_key}":
            return 401, _error("Incorrect API key provided.", "invalid_api_key")
        endpoint = ENDPOINTS.get(path)
        if endpoint is None:
            return 404, _error(f"Invalid URL (GET {path})", "invalid_request_error")

        def values(name: str) -> list[str]:
            found = query.get(name, []) + query.get(f"{name}[]", [])
            return [v for value in found for v in value.split(",") if v]

        try:
            start = int(values("start_time")[0])
            end = int(values("end_time")[0]) if values("end_time") else 2**62
            limit = int(values("limit")[0]) if values("limit") else 7
            offset = int(values("page")[0].removeprefix("page_")) if values("page") else 0
        except (IndexError, ValueError):
            return 400, _error("start_time is required (Unix seconds)", "invalid_request_error")
        if (values("bucket_width") or ["1d"])[0] != "1d":
            return 400, _error("this fake serves daily buckets only", "invalid_request_error")
        if not 1 <= limit <= 31:
            return 400, _error("limit must be between 1 and 31", "invalid_request_error")
        projects, group_by = set(values("project_ids")), values("group_by")
        buckets = [b for b in self.buckets[endpoint] if start <= b["start_time"] < end]
        size = min(limit, self.page_size)
        page = buckets[offset : offset + size]
        more = offset + size < len(buckets)
        data = []
        for bucket in page:
            results = [r for r in bucket["results"] if not projects or r["project_id"] in projects]
            data.append({**bucket, "results": regroup(results, group_by)})
        return 200, {
            "object": "page",
            "data": data,
            "has_more": more,
            "next_page": f"page_{offset + size}" if more else None,
        }

    def start(self) -> FakeOpenAIUsage:
        self.serve_get(self.answer)
        return self


def _error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": code}}
