"""The operator's console (/admin) in headless Chromium: every key of a chosen UTC
period costliest first, with the same figures as the ledger (phone call legs a kind of
their own) and its budget where it has one; a key's breakdown and calls; a call's
ledger rows; a customer key refused."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from supabase import AsyncClient

from flow.db import budgets
from flow.db import keys as keys_repo
from flow.db import operators as operators_repo
from flow.db import threads as threads_repo
from flow.db.usage import record_usage_events
from flow.metering.events import UsageEvent
from tests.e2e.test_dashboard import ARTIFACTS, chromium_path, live_server  # noqa: F401
from tests.integration.test_ledger import llm_event, stt_event, telephony_event, tts_event

DAY = datetime(2025, 7, 14, tzinfo=UTC)  # a day no other test writes usage on


async def seed_key(
    sb: AsyncClient, calls: int, rnd: random.Random
) -> tuple[dict[str, Any], list[UsageEvent]]:
    row, _ = await keys_repo.create_local_key(sb, f"console-{uuid.uuid4().hex[:6]}")
    events: list[UsageEvent] = []
    for n in range(calls):
        at = DAY + timedelta(hours=3 + 5 * n, minutes=rnd.randint(0, 50))
        thread = await threads_repo.create_thread(
            sb,
            api_key_id=row["id"],
            transport="simulated",
            end_user_id=f"caller-{n % 2}",
            bot_started_at=at.isoformat(),
            bot_ended_at=(at + timedelta(minutes=2)).isoformat(),
            transcript=[
                {"role": "user", "content": "hello", "started_at": at.isoformat()},
                {"role": "assistant", "content": "hi there", "started_at": at.isoformat()},
            ],
        )
        for make in (
            lambda t: llm_event(t),
            lambda t: tts_event(t, rnd.randint(50, 900)),
            lambda t: stt_event(t, "4.500"),
            lambda t: telephony_event(t, "75.500"),
        ):
            events.append(make(thread).model_copy(update={"occurred_at": at}))
    await record_usage_events(sb, events)
    return row, events


def by_kind(events: list[UsageEvent]) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for e in events:
        out[str(e.kind)] = out.get(str(e.kind), Decimal(0)) + (e.cost_usd or 0)
    return out


async def test_console_shows_who_to_bill_and_drills_down_to_ledger_rows(
    sb: AsyncClient,
    live_server: str,  # noqa: F811
) -> None:
    from playwright.async_api import async_playwright

    rnd = random.Random(4)
    big, big_events = await seed_key(sb, 3, rnd)
    small, small_events = await seed_key(sb, 1, rnd)
    await budgets.set_budget(sb, str(big["id"]), budgets.Budget(Decimal(50), period="total"))
    _, token = await operators_repo.create_token(sb, "console test")
    _, customer_key = await keys_repo.create_local_key(sb, "console customer")
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=chromium_path(),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
        )
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            await page.goto(f"{live_server}/admin")
            await page.fill("#token", token)
            await page.click("#login button[type=submit]")
            await page.wait_for_selector("body[data-loaded=true]", timeout=15_000)
            # Any UTC period: the seeded day only.
            await page.evaluate("() => { document.body.dataset.loaded = 'false'; }")
            await page.fill("#start", "2025-07-14T00:00:00")
            await page.fill("#end", "2025-07-15T00:00:00")
            await page.click("#period button[type=submit]")
            await page.wait_for_selector("body[data-loaded=true]", timeout=15_000)

            total = sum(e.cost_usd or 0 for e in big_events + small_events)
            assert Decimal(str(await page.get_attribute("#kpi-cost", "data-value"))) == total
            assert await page.inner_text("#kpi-calls") == "4"
            rows = await page.eval_on_selector_all(
                "#keys tbody tr", "rs => rs.map(r => [r.dataset.id, r.dataset.cost])"
            )
            assert [r[0] for r in rows[:2]] == [str(big["id"]), str(small["id"])]
            assert Decimal(rows[0][1]) == sum(e.cost_usd or 0 for e in big_events)
            assert all(Decimal(c) == 0 for _, c in rows[2:])
            donut = await page.evaluate(
                """() => { const c = Chart.getChart('chart-kind');
                  return [c.data.labels, c.data.datasets[0].data,
                          c.data.datasets[0].backgroundColor]; }"""
            )
            expected = by_kind(big_events + small_events)
            labels = {"LLM": "llm", "TTS": "tts", "STT": "stt", "Telephony": "telephony"}
            assert {labels[label] for label in donut[0]} == set(expected)
            for label, value in zip(donut[0], donut[1], strict=True):
                assert abs(Decimal(str(value)) - expected[labels[label]]) < Decimal("1e-9")
            # The same kind has the same colour in the per-key chart.
            colours = await page.evaluate(
                """() => Object.fromEntries(Chart.getChart('chart-keys').data.datasets
                  .map(d => [d.label, d.backgroundColor]))"""
            )
            assert colours == dict(zip(donut[0], donut[2], strict=True))
            # The budget where the key has one: spent of the limit, what remains.
            state = await budgets.status(sb, str(big["id"]))
            assert state is not None
            cell = page.locator(f"#keys tbody tr[data-id='{big['id']}'] td.budget")
            assert await cell.get_attribute("data-limit") == state["limit_usd"]
            assert await cell.get_attribute("data-spent") == state["spent_usd"]
            assert await cell.get_attribute("data-remaining") == state["remaining_usd"]
            assert "of $50.00" in await cell.inner_text()
            none = page.locator(f"#keys tbody tr[data-id='{small['id']}'] td.budget")
            assert (await none.inner_text()).strip() == "—"
            await page.screenshot(path=str(ARTIFACTS / "admin.png"), full_page=True)

            # A key: its breakdown by day and by kind, and its calls.
            await page.click(f"#keys tbody tr[data-id='{big['id']}'] a")
            await page.wait_for_selector("#key:not([hidden])", timeout=10_000)
            await page.wait_for_selector("#key-calls[data-loaded=true]", timeout=10_000)
            assert await page.locator("#key-calls table.calls tbody tr").count() == 3
            assert await page.locator("#key-groups tbody tr").count() == 1  # one day
            assert "Budget:" in await page.inner_text("#key-budget")
            await page.click("#key-tabs button[data-group=kind]")
            await page.wait_for_function(
                "() => document.querySelectorAll('#key-groups tbody tr').length === 4"
            )
            await page.fill("#key-calls input[name=end_user_id]", "caller-0")
            await page.click("#key-calls button[type=submit]")
            # (The tab's own reload of the calls may land first: wait for the filter's.)
            await page.wait_for_function(
                "() => document.querySelectorAll('#key-calls table.calls tbody tr').length === 2",
                timeout=10_000,
            )

            # A call: its ledger rows, timeline, transcript.
            call_id = await page.locator("#key-calls table.calls tbody tr").first.get_attribute(
                "data-id"
            )
            await page.click(f"#key-calls tr[data-id='{call_id}'] a")
            await page.wait_for_selector("#detail:not([hidden])", timeout=10_000)
            mine = [e for e in big_events if str(e.workflow_thread_id) == call_id]
            ledger = page.locator("#detail-body table.ledger tbody tr")
            await ledger.first.wait_for(timeout=10_000)
            assert sorted(await ledger.evaluate_all("rs => rs.map(r => r.dataset.id)")) == sorted(
                str(e.id) for e in mine
            )
            assert "hi there" in await page.inner_text("#detail-body ol.transcript")
            await page.screenshot(path=str(ARTIFACTS / "admin-call.png"), full_page=True)

            # A customer key is refused.
            other = await browser.new_page()
            await other.goto(f"{live_server}/admin")
            await other.fill("#token", customer_key)
            await other.click("#login button[type=submit]")
            await other.wait_for_selector("#error:not([hidden])", timeout=10_000)
            assert "operator token" in await other.inner_text("#error")
            assert await other.is_hidden("#content")
        finally:
            await browser.close()
