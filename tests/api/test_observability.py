"""What an operator sees of a running ``flow serve``: Prometheus metrics on
``FLOW_METRICS_PORT`` (no auth there; on the API's port behind the operator token) with
bounded labels, and with ``FLOW_LOG_FORMAT=json`` one JSON object a line naming the
request, key and call, with no secret in any of them."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from flow import localstack
from flow.db import operators as operators_repo
from flow.db import threads as threads_repo
from tests.api.conftest import bearer
from tests.fakes.openai_server import FakeOpenAI
from tests.served import ServedFlow

SCRIPT = ["What time do you open?", "Thanks, bye."]


@pytest.fixture(scope="module")
async def vendor() -> AsyncIterator[FakeOpenAI]:
    server = await FakeOpenAI(replies=["We open at nine.", "Goodbye."]).start()
    yield server
    await server.stop()


@pytest.fixture(scope="module")
def served(
    stack: localstack.StackInfo, tmp_path_factory: pytest.TempPathFactory, vendor: FakeOpenAI
) -> Iterator[ServedFlow]:
    tmp = tmp_path_factory.mktemp("observed")
    metrics_port = localstack.free_port(None)
    with ServedFlow(
        stack,
        tmp / "flow.log",
        OPENAI_BASE_URL=vendor.base_url,
        FLOW_SPOOL_DIR=str(tmp / "spool"),
        FLOW_METRICS_PORT=str(metrics_port),
        FLOW_LOG_FORMAT="json",
        FLOW_LOG_LEVEL="INFO",
    ) as flow:
        flow.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"  # type: ignore[attr-defined]
        yield flow


def scrape(flow: ServedFlow) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    res = httpx.get(flow.metrics_url, timeout=5)  # type: ignore[attr-defined]
    assert res.status_code == 200
    assert res.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(res.text)
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def finished_call(flow: ServedFlow, sb: Any, key: dict[str, Any]) -> str:
    async with httpx.AsyncClient(base_url=flow.url, timeout=10) as client:
        res = await client.post(
            "/api/bot/join",
            headers=bearer(key),
            json={"transport": "simulated", "script": SCRIPT, "process_insights": False},
        )
        assert res.status_code == 202, res.text
    tid = str(res.json()["workflow_thread_id"])
    for _ in range(300):
        row = await threads_repo.get_thread(sb, tid)
        if row is not None and row["status"] in ("completed", "failed"):
            assert row["status"] == "completed", row
            return tid
        await asyncio.sleep(0.1)
    raise AssertionError("the call did not finish")


async def test_metrics_are_open_on_their_port_and_the_operators_on_the_api_port(
    served: ServedFlow, sb: Any, api_key: dict[str, Any]
) -> None:
    samples = scrape(served)
    assert value(samples, "flow_draining") == 0
    assert ("flow_calls_live", ()) in samples
    _, token = await operators_repo.create_token(sb, f"scraper-{uuid.uuid4().hex[:6]}")
    async with httpx.AsyncClient(base_url=served.url, timeout=5) as client:
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers=bearer(api_key))).status_code == 403
        res = await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(res.text)}
    assert {"flow_calls_live", "flow_draining"} <= names


async def test_a_call_is_counted_with_its_usage_cost_and_timings_under_bounded_labels(
    served: ServedFlow, sb: Any, api_key: dict[str, Any]
) -> None:
    before = scrape(served)
    tid = await finished_call(served, sb, api_key)
    async with httpx.AsyncClient(timeout=5) as client:
        refused = await client.post(f"{served.url}/api/bot/join", json={"transport": "simulated"})
        assert refused.status_code == 401
        text = (await client.get(served.metrics_url)).text  # type: ignore[attr-defined]
    after = scrape(served)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("flow_joins_total", status="202") == 1
    assert grew("flow_joins_total", status="401") == 1
    assert grew("flow_calls_ended_total", reason="completed") == 1
    assert grew("flow_call_duration_seconds_count") == 1
    assert grew("flow_usage_events_total", kind="llm") == 2
    assert grew("flow_usage_events_total", kind="tts") >= 2
    assert grew("flow_usage_cost_usd_total", kind="llm", model="gpt-4o-mini") > 0
    assert grew("flow_ledger_write_seconds_count", outcome="ok") >= 1
    assert value(after, "flow_calls_live") == 0
    assert value(after, "flow_meter_buffered_events") == 0
    assert value(after, "flow_spool_bytes") == 0
    assert tid not in text and str(api_key["id"]) not in text


async def test_json_log_lines_name_request_key_and_call_and_hold_no_secret(
    served: ServedFlow, sb: Any, api_key: dict[str, Any]
) -> None:
    secret = api_key["plaintext"]
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
        res = await client.get(f"/api/usage?key={secret}&days=3")
        assert res.status_code == 401
        res = await client.get("/api/usage", headers={"Authorization": f"Bearer {secret}x"})
        assert res.status_code == 401
    tid = await finished_call(served, sb, api_key)
    await asyncio.sleep(0.5)
    log = served.log()
    assert secret not in log
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    assert any("[redacted]" in line["message"] for line in lines), "the access log is redacted"
    about_call = [line for line in lines if line.get("thread_id") == tid]
    assert about_call, "the call's own lines name it"
    assert all(line.get("key_id") == str(api_key["id"]) for line in about_call)
    assert all(line.get("request_id") for line in about_call), "named by the join's request"
    joins = [line for line in lines if "POST /api/bot/join" in line["message"]]
    assert joins and all(line.get("request_id") for line in joins)
    assert any(line.get("key_id") == str(api_key["id"]) for line in joins), "the key, once known"
    usage = [line for line in lines if "GET /api/usage HTTP" in line["message"]]
    assert usage and all("key_id" not in line for line in usage), "no key was valid"


def test_the_log_of_the_served_process_is_all_json(served: ServedFlow, tmp_path: Path) -> None:
    for line in served.log().splitlines():
        if line.strip():
            assert isinstance(json.loads(line), dict), line
