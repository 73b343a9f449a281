"""The usage dashboard: its data against independent sums, and the page itself in
headless Chromium (Debian's package, driven by Playwright) against seeded usage."""

from __future__ import annotations

import random
import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from supabase import AsyncClient

from flow.config import Settings
from flow.db import keys as keys_repo
from flow.db import threads as threads_repo
from flow.db.usage import record_usage_events
from flow.localstack import free_port
from flow.main import create_app
from flow.metering.events import UsageCategory, UsageEvent, UsageKind
from flow.metering.pricing import PriceBook, cost_fields
from tests.api.conftest import bearer, local_mode, serve
from tests.api.recording_runner import RecordingRunner

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
BOOK = PriceBook()


async def seed(sb: AsyncClient, api_key: dict[str, Any]) -> list[UsageEvent]:
    """Three calls over three days: bot LLM + TTS, insights LLM, one error."""
    rnd = random.Random(7)
    events: list[UsageEvent] = []
    now = datetime.now(UTC)
    for day in range(3):
        thread = await threads_repo.create_thread(
            sb, api_key_id=api_key["id"], transport="simulated", end_user_id=f"user-{day % 2}"
        )
        at = now - timedelta(days=day, minutes=5)
        for model in ("gpt-4o-mini", "gpt-4o"):
            i, o = rnd.randint(200, 3000), rnd.randint(10, 300)
            price = BOOK.llm("openai", model, input_tokens=i, output_tokens=o)
            assert price is not None
            events.append(
                UsageEvent(
                    workflow_thread_id=thread["workflow_thread_id"],
                    api_key_id=api_key["id"],
                    end_user_id=thread["end_user_id"],
                    occurred_at=at,
                    kind=UsageKind.LLM,
                    category=UsageCategory.INSIGHTS if model == "gpt-4o" else UsageCategory.BOT,
                    provider="openai",
                    model=model,
                    input_tokens=i,
                    output_tokens=o,
                    cost_usd=price.total_cost_usd,
                    latency_ms=Decimal(rnd.randint(150, 900)),
                    is_error=day == 2 and model == "gpt-4o",
                )
            )
        chars = rnd.randint(50, 400)
        events.append(
            UsageEvent(
                workflow_thread_id=thread["workflow_thread_id"],
                api_key_id=api_key["id"],
                end_user_id=thread["end_user_id"],
                occurred_at=at,
                kind=UsageKind.TTS,
                provider="openai",
                model="tts-1",
                characters=chars,
                **cost_fields(BOOK.tts("openai", "tts-1", chars)),
            )
        )
    await record_usage_events(sb, events)
    return events


async def test_dashboard_data_matches_independent_sums(
    settings: Settings, sb: AsyncClient, api_key: dict[str, Any]
) -> None:
    events = await seed(sb, api_key)
    other, other_plain = await keys_repo.create_local_key(sb, "someone else")
    async with serve(local_mode(settings), RecordingRunner()) as client:
        resp = await client.get("/api/dashboard?days=7", headers=bearer(api_key))
        assert resp.status_code == 200, resp.text
        data = resp.json()
        theirs = await client.get(
            "/api/dashboard?days=7", headers={"Authorization": f"Bearer {other_plain}"}
        )
        wrong = await client.get("/api/dashboard", headers={"Authorization": "Bearer nope"})
        bad = await client.get("/api/dashboard?days=0", headers=bearer(api_key))
        page = await client.get("/dashboard")
        chart_js = await client.get("/dashboard/static/vendor/chart.umd.min.js")

    total = sum((e.cost_usd or Decimal(0) for e in events), Decimal(0))
    t = data["totals"]
    assert Decimal(t["cost_usd"]) == total
    assert t["calls"] == 3
    assert t["end_users"] == 2
    assert t["tokens"] == sum(e.total_tokens for e in events)
    assert t["tts_characters"] == sum(e.characters for e in events)
    assert Decimal(t["avg_cost_per_call_usd"]) == round(total / 3, 10)
    assert Decimal(t["error_rate"]) == round(Decimal(1) / len(events), 4)
    per_model: dict[str, Decimal] = {}
    for e in events:
        per_model[e.model] = per_model.get(e.model, Decimal(0)) + (e.cost_usd or 0)
    got: dict[str, Decimal] = {}
    for row in data["cost_by_day_model"]:
        got[row["model"]] = got.get(row["model"], Decimal(0)) + Decimal(row["cost_usd"])
    assert got == per_model
    insights = sum((e.cost_usd or 0 for e in events if e.category == "insights"), Decimal(0))
    assert Decimal(data["cost_by_category"]["insights"]) == insights
    by_kind: dict[str, Decimal] = {}
    for e in events:
        by_kind[str(e.kind)] = by_kind.get(str(e.kind), Decimal(0)) + (e.cost_usd or 0)
    assert {k: Decimal(v) for k, v in data["cost_by_kind"].items()} == by_kind
    latencies = sorted(e.latency_ms for e in events if e.latency_ms is not None)

    def percentile(q: Decimal) -> Decimal:  # percentile_cont: linear interpolation
        pos = q * (len(latencies) - 1)
        low = int(pos)
        high = min(low + 1, len(latencies) - 1)
        return latencies[low] + (latencies[high] - latencies[low]) * (pos - low)

    assert t["latency_sample"] == len(latencies)
    assert Decimal(t["llm_latency_p50_ms"]) == round(percentile(Decimal("0.5")), 1)
    assert Decimal(t["llm_latency_p95_ms"]) == round(percentile(Decimal("0.95")), 1)
    costs = [Decimal(c["cost_usd"]) for c in data["top_calls"]]
    assert costs == sorted(costs, reverse=True) and len(costs) == 3

    assert theirs.status_code == 200 and theirs.json()["totals"]["calls"] == 0
    assert wrong.status_code == 401 and wrong.json()["error"]
    assert bad.status_code == 422
    assert page.status_code == 200 and "chart.umd.min.js" in page.text
    assert chart_js.status_code == 200 and "Chart.js" in chart_js.text[:200]
    await keys_repo.revoke_key(sb, str(other["id"]))


@pytest.fixture
def live_server(settings: Settings) -> Iterator[str]:
    """The real app served by uvicorn on a free port, in a thread of its own."""
    port = free_port(None)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(local_mode(settings), RecordingRunner()),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server did not start")
        threading.Event().wait(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def chromium_path() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("Debian's chromium is required (scripts/setup installs it)")
    return path


async def test_dashboard_renders_seeded_totals_in_headless_chromium(
    sb: AsyncClient, api_key: dict[str, Any], live_server: str
) -> None:
    from playwright.async_api import async_playwright

    events = await seed(sb, api_key)
    total = sum((e.cost_usd or Decimal(0) for e in events), Decimal(0))
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=chromium_path(),
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            await page.goto(f"{live_server}/dashboard")
            await page.fill("#key", api_key["plaintext"])
            await page.click("button[type=submit]")
            await page.wait_for_selector("body[data-loaded=true]", timeout=15_000)
            shown = await page.get_attribute("#kpi-cost", "data-value")
            assert shown is not None and Decimal(shown) == total
            assert await page.inner_text("#kpi-calls") == "3"
            # Each chart drew its datasets from the seeded figures.
            charted = await page.evaluate(
                """() => {
                  const c = Chart.getChart('chart-cost');
                  return c.data.datasets.map(d => [d.label, d.data.reduce((a, b) => a + b, 0)]);
                }"""
            )
            per_model: dict[str, Decimal] = {}
            for e in events:
                per_model[e.model] = per_model.get(e.model, Decimal(0)) + (e.cost_usd or 0)
            assert {label for label, _ in charted} == set(per_model)
            for label, value in charted:
                assert abs(Decimal(str(value)) - per_model[label]) < Decimal("1e-9")
            painted = await page.evaluate(
                """() => ['chart-cost', 'chart-volume', 'chart-kind'].map(id => {
                  const cv = document.getElementById(id);
                  const px = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
                  let n = 0; for (let i = 3; i < px.length; i += 4) if (px[i]) n++;
                  return n;
                })"""
            )
            assert all(n > 500 for n in painted), painted
            rows = await page.locator("#top-calls tbody tr").count()
            assert rows == 3

            # The donut splits the cost by kind, one colour per kind.
            donut = await page.evaluate(
                """() => { const c = Chart.getChart('chart-kind');
                  return [c.data.labels, c.data.datasets[0].data]; }"""
            )
            kinds = {"LLM": "llm", "TTS": "tts"}
            for label, value in zip(*donut, strict=True):
                cost = sum(e.cost_usd or 0 for e in events if e.kind == kinds[label])
                assert abs(Decimal(str(value)) - cost) < Decimal("1e-9")

            # Every call is listed (paged), and a call opens its ledger rows.
            await page.wait_for_selector("#calls[data-loaded=true]", timeout=10_000)
            assert await page.locator("#calls table.calls tbody tr").count() == 3
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            first = await page.locator("#top-calls tbody tr a").first.get_attribute("title")
            await page.locator("#top-calls tbody tr a").first.click()
            await page.wait_for_selector("#detail:not([hidden])", timeout=10_000)
            mine = [e for e in events if str(e.workflow_thread_id) == first]
            ledger = page.locator("#detail-body table.ledger tbody tr")
            await ledger.first.wait_for(timeout=10_000)
            assert await ledger.count() == len(mine)
            shown_cost = await page.get_attribute("#detail-body .call-cost", "data-value")
            assert Decimal(str(shown_cost)) == sum(e.cost_usd or 0 for e in mine)
            assert await page.locator("#detail-body ol.timeline li").count() >= len(mine)

            # A wrong key sees no data.
            wrong = await browser.new_page()
            await wrong.goto(f"{live_server}/dashboard")
            await wrong.fill("#key", "flow_sk_not-a-real-key")
            await wrong.click("button[type=submit]")
            await wrong.wait_for_selector("#error:not([hidden])", timeout=10_000)
            assert await wrong.is_hidden("#content")
            assert await wrong.inner_text("#kpi-cost") == ""
        finally:
            await browser.close()
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
