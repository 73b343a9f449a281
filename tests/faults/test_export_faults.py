"""Export faults, each measured against the ledger: a destination answering 429 (with
Retry-After), 500 several times, or after the client's timeout (having ingested the
batch), then OK; and two Flow instances syncing the same integration at once.

Each test prints one line (and appends it to the file named by ``FLOW_FAULT_REPORT``)::

    FAULT <name>: metered=<N> delivered=<N> lost=<N> doubled=<N>

metered: ledger rows in the integration's scope; delivered: rows the sink received, by
the destination's dedup id (PostHog ``uuid``, Mixpanel ``$insert_id``); lost: metered
rows never delivered; doubled: rows the sink took under more than one dedup id, that is
counted twice by the destination. A resend under the same dedup id is not doubled: the
destination drops it, which is the contract the exporter relies on. Rows are matched to
received events by their content (thread, tokens, cost), which the seeded rows make
unique, so an event under an unexpected id is still traced to its row. Every test
requires lost == 0 and doubled == 0, and the cursor at the last row.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest
from supabase import AsyncClient

from flow.config import Settings
from flow.db.client import call
from flow.exporters.base import export_uuid, insert_id
from flow.exporters.sync import Exporter, SyncOutcome
from tests.exporters.conftest import MP_SECRET, integration_row, seed
from tests.exporters.test_mixpanel import create_mixpanel
from tests.exporters.test_sync import create_posthog
from tests.fakes.analytics_sinks import MixpanelSink, PostHogSink
from tests.faults.report import report_fault

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("cleanup_integrations")]

ROWS = 25
PAGE = 10  # three batches: faults hit the second, after the cursor has moved once
CLIENT_TIMEOUT = 0.3
LATE = 0.8  # a late answer comes this long after the request: past the client's timeout
RETRY_AFTER = 2  # seconds; recorded by the exporter's sleep, not waited
DESTINATIONS = ["posthog", "mixpanel-import", "mixpanel-track"]


class FaultExporter(Exporter):
    """An exporter that records the delays it asked to sleep (``sleeps``)."""

    sleeps: list[float]


@dataclass(frozen=True)
class Figures:
    metered: int
    delivered: int
    lost: int
    doubled: int
    resent: int  # events the sink received again under a dedup id it already had
    strangers: int  # events that match no ledger row, or their id another row's


@dataclass
class Target:
    """A destination under test: its sink, the integration, and how to read events."""

    name: str
    sink: PostHogSink | MixpanelSink
    integration: dict[str, Any]
    dedup_of_row: Callable[[str], str]
    dedup_of_event: Callable[[dict[str, Any]], str]


def report(name: str, figures: Figures) -> None:
    report_fault(
        name,
        figures.metered,
        figures.delivered,
        figures.lost,
        figures.doubled,
        arrived_as="delivered",
    )


Content = tuple[str, int, int, Decimal | None]


def _content(thread_id: Any, input_tokens: Any, output_tokens: Any, cost: Any) -> Content:
    """What identifies a seeded row apart from its id (numbers compared as numbers)."""
    return (
        str(thread_id),
        int(input_tokens),
        int(output_tokens),
        None if cost is None else Decimal(str(cost)),
    )


def _event_content(event: dict[str, Any]) -> Content:
    p = event["properties"]  # the same properties for PostHog and Mixpanel
    return _content(p["workflow_thread_id"], p["input_tokens"], p["output_tokens"], p["cost"])


async def ledger_rows(sb: AsyncClient, api_key_id: str) -> list[dict[str, Any]]:
    """The integration's scope: every ledger row of its key."""
    res = await call(
        sb.table("usage_events")
        .select("id,txid,seq,workflow_thread_id,input_tokens,output_tokens,cost_usd")
        .eq("api_key_id", api_key_id)
        .execute
    )
    data: Any = res.data
    return list(data)


async def measure(sb: AsyncClient, target: Target, api_key_id: str) -> Figures:
    rows = await ledger_rows(sb, api_key_id)
    by_content = {
        _content(
            r["workflow_thread_id"], r["input_tokens"], r["output_tokens"], r["cost_usd"]
        ): str(r["id"])
        for r in rows
    }
    assert len(by_content) == len(rows), "seeded rows must differ in content"
    row_of_dedup = {target.dedup_of_row(str(r["id"])): str(r["id"]) for r in rows}
    received = Counter(target.dedup_of_event(e) for e in target.sink.events)
    ids_of_row: dict[str, set[str]] = defaultdict(set)
    strangers = 0
    for event in target.sink.events:
        dedup = target.dedup_of_event(event)
        row_id = by_content.get(_event_content(event))
        if row_id is None or row_of_dedup.get(dedup, row_id) != row_id:
            strangers += 1
            continue
        ids_of_row[row_id].add(dedup)
    delivered = sum(1 for d in row_of_dedup if d in received)
    return Figures(
        metered=len(rows),
        delivered=delivered,
        lost=len(rows) - delivered,
        doubled=sum(1 for ids in ids_of_row.values() if len(ids) > 1),
        resent=sum(n - 1 for n in received.values()),
        strangers=strangers,
    )


async def check(
    sb: AsyncClient, name: str, target: Target, api_key_id: str, outcomes: list[SyncOutcome]
) -> Figures:
    """Report the figures, then require every row delivered once, the cursor at the
    last row and the integration healthy."""
    figures = await measure(sb, target, api_key_id)
    report(name, figures)
    assert figures.lost == 0
    assert figures.doubled == 0
    assert figures.strangers == 0
    assert figures.metered == ROWS
    rows = await ledger_rows(sb, api_key_id)
    last = max((int(r["txid"]), int(r["seq"])) for r in rows)
    row = await integration_row(sb, target.integration["id"])
    assert (int(row["cursor_txid"]), int(row["cursor_seq"])) == last
    assert row["status"] == "active" and row["last_error"] is None
    assert row["events_exported"] == ROWS
    assert sum(o.exported for o in outcomes) == ROWS
    assert all(o.error is None for o in outcomes)
    return figures


@pytest.fixture
async def make_exporter(
    sb: AsyncClient, export_settings: Settings
) -> AsyncIterator[Callable[..., FaultExporter]]:
    """Exporters with small backoff and a short client timeout; the sleeps they ask for
    are recorded in ``.sleeps`` and not waited."""
    made: list[httpx.AsyncClient] = []

    def make(timeout: float = CLIENT_TIMEOUT, **kwargs: Any) -> FaultExporter:
        http = httpx.AsyncClient(timeout=timeout)
        made.append(http)
        sleeps: list[float] = []

        async def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            await asyncio.sleep(0)

        kwargs.setdefault("page_size", PAGE)
        kwargs.setdefault("max_attempts", 6)
        kwargs.setdefault("backoff_base_seconds", 0.01)
        kwargs.setdefault("backoff_max_seconds", 5.0)
        ex = FaultExporter(
            sb,
            export_settings,
            http=http,
            owner=f"fault-{uuid.uuid4().hex[:8]}",
            sleep=sleep,
            **kwargs,
        )
        ex.sleeps = sleeps
        return ex

    yield make
    for http in made:
        await http.aclose()


@pytest.fixture
async def target(
    request: pytest.FixtureRequest,
    sb: AsyncClient,
    export_settings: Settings,
    posthog_sink: PostHogSink,
    mixpanel_sink: MixpanelSink,
    api_key: dict[str, Any],
    thread: dict[str, Any],
) -> Target:
    """The integration for ``request.param`` with ROWS ledger rows to export."""
    name = str(request.param)
    if name == "posthog":
        integ = await create_posthog(sb, export_settings, posthog_sink, api_key)
        found = Target(
            name, posthog_sink, integ, lambda i: export_uuid(i), lambda e: str(e["uuid"])
        )
    else:
        secret = {"api_secret": MP_SECRET} if name == "mixpanel-import" else {}
        integ = await create_mixpanel(sb, export_settings, mixpanel_sink, api_key, **secret)
        found = Target(
            name,
            mixpanel_sink,
            integ,
            lambda i: insert_id(i),
            lambda e: str(e["properties"]["$insert_id"]),
        )
    await seed(sb, thread, ROWS)
    found.sink.requests.clear()  # Mixpanel's credentials check is not part of the fault
    return found


def _paths(target: Target) -> set[str]:
    return {r["path"] for r in target.sink.requests}


def _expected_path(target: Target) -> str:
    return {"posthog": "/batch/", "mixpanel-import": "/import", "mixpanel-track": "/track"}[
        target.name
    ]


@pytest.mark.parametrize("target", DESTINATIONS, indirect=True)
async def test_429_with_retry_after_then_ok(
    sb: AsyncClient,
    target: Target,
    make_exporter: Callable[..., FaultExporter],
    api_key: dict[str, Any],
) -> None:
    target.sink.pass_next(1)
    target.sink.fail_next(429, times=2, retry_after=str(RETRY_AFTER))
    ex = make_exporter()
    outcomes = await ex.run_due(force=True, ids=[target.integration["id"]])
    await check(sb, f"{target.name}-429-retry-after", target, api_key["id"], outcomes)
    assert ex.sleeps == [float(RETRY_AFTER)] * 2
    assert len(target.sink.requests) == 3 + 2
    assert _paths(target) == {_expected_path(target)}


@pytest.mark.parametrize("target", DESTINATIONS, indirect=True)
async def test_500_several_times_then_ok(
    sb: AsyncClient,
    target: Target,
    make_exporter: Callable[..., FaultExporter],
    api_key: dict[str, Any],
) -> None:
    target.sink.pass_next(1)
    target.sink.fail_next(500, times=4)
    ex = make_exporter()
    outcomes = await ex.run_due(force=True, ids=[target.integration["id"]])
    await check(sb, f"{target.name}-500x4", target, api_key["id"], outcomes)
    assert len(ex.sleeps) == 4
    assert len(target.sink.requests) == 3 + 4


@pytest.mark.parametrize("target", DESTINATIONS, indirect=True)
async def test_answer_after_the_client_timeout_then_ok(
    sb: AsyncClient,
    target: Target,
    make_exporter: Callable[..., FaultExporter],
    api_key: dict[str, Any],
) -> None:
    # The sink ingests the second batch, twice, but answers after the client gave up.
    target.sink.pass_next(1)
    target.sink.answer_late(LATE, times=2)
    ex = make_exporter()
    outcomes = await ex.run_due(force=True, ids=[target.integration["id"]])
    figures = await check(sb, f"{target.name}-timeout", target, api_key["id"], outcomes)
    assert figures.resent == 2 * PAGE  # resent under the same ids: dropped by the sink
    assert len(ex.sleeps) == 2


@pytest.mark.parametrize("target", DESTINATIONS, indirect=True)
async def test_two_owners_racing_for_the_same_integration(
    sb: AsyncClient,
    target: Target,
    make_exporter: Callable[..., FaultExporter],
    api_key: dict[str, Any],
) -> None:
    target.sink.answer_late(0.2, times=3)  # the winner's cycle is still running
    a, b = make_exporter(), make_exporter()
    iid = target.integration["id"]
    runs = await asyncio.gather(a.run_due(force=True, ids=[iid]), b.run_due(force=True, ids=[iid]))
    outcomes = [o for run in runs for o in run]
    assert len(outcomes) == 1  # the lease: one owner ran the cycle, the other found none
    await check(sb, f"{target.name}-two-owners-race", target, api_key["id"], outcomes)


@pytest.mark.parametrize("target", DESTINATIONS, indirect=True)
async def test_two_owners_when_a_lease_expires_mid_batch(
    sb: AsyncClient,
    target: Target,
    make_exporter: Callable[..., FaultExporter],
    api_key: dict[str, Any],
) -> None:
    # Owner A claims with a one-second lease; the sink takes A's first batch but answers
    # only after the lease has expired; owner B claims meanwhile and syncs everything.
    # A's late success must not move the cursor nor count anything.
    target.sink.answer_late(1.6, times=1)
    iid = target.integration["id"]
    a = make_exporter(timeout=5.0, lease_seconds=1)
    b = make_exporter()
    claimed = await a.claim(force=True, ids=[iid])
    assert [r["id"] for r in claimed] == [iid]

    async def b_after_expiry() -> list[SyncOutcome]:
        await asyncio.sleep(1.2)
        return await b.run_due(force=True, ids=[iid])

    a_outcome, b_outcomes = await asyncio.gather(a.sync_one(claimed[0]), b_after_expiry())
    assert a_outcome.exported == 0 and a_outcome.error is not None
    assert "lease lost" in a_outcome.error
    assert [o.exported for o in b_outcomes] == [ROWS]
    figures = await check(
        sb, f"{target.name}-two-owners-lease-expiry", target, api_key["id"], b_outcomes
    )
    assert figures.resent == PAGE  # A's batch, sent again by B under the same ids
