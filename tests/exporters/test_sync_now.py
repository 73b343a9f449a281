"""``request_sync`` ("sync now") against cycles in flight: a request made while a cycle
runs is never lost and runs exactly one more cycle right after it; a request made while
nothing runs is served by the next cycle and leaves nothing behind."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime
from typing import Any

import pytest
from supabase import AsyncClient

from flow.config import Settings
from flow.db import integrations as integrations_db
from flow.exporters.base import export_uuid
from flow.exporters.scheduler import SyncScheduler
from flow.exporters.sync import Exporter, SyncOutcome
from tests.exporters.conftest import exporter, integration_row, seed, wait_until
from tests.exporters.test_sync import create_posthog
from tests.fakes.analytics_sinks import PostHogSink

pytestmark = pytest.mark.usefixtures("cleanup_integrations")


def counting(ex: Exporter) -> list[str]:
    """Records every cycle ``ex`` runs (the integration id), in order."""
    cycles: list[str] = []
    inner = ex.sync_one

    async def sync_one(row: dict[str, Any], **kw: Any) -> SyncOutcome:
        cycles.append(str(row["id"]))
        return await inner(row, **kw)

    ex.sync_one = sync_one  # type: ignore[method-assign]
    return cycles


async def test_a_request_between_claim_and_release_runs_one_more_cycle(
    sb: AsyncClient,
    export_settings: Settings,
    posthog_sink: PostHogSink,
    api_key: dict[str, Any],
    thread: dict[str, Any],
) -> None:
    first = await seed(sb, thread, 3)
    integ = await create_posthog(sb, export_settings, posthog_sink, api_key)
    ex = exporter(sb, export_settings)
    claimed = await ex.claim(ids=[integ["id"]])
    assert [r["id"] for r in claimed] == [integ["id"]]

    # The cycle has claimed the integration; "sync now" arrives before it ends.
    assert await integrations_db.request_sync(sb, integ["id"], api_key_id=api_key["id"])
    outcome = await ex.sync_one(claimed[0])
    assert outcome.error is None and outcome.exported == 3

    cycles = counting(ex)
    await ex.run_due(ids=[integ["id"]])  # not forced: only what is due
    assert cycles == [integ["id"]], "the request made during the cycle was lost"
    seen = Counter(e["uuid"] for e in posthog_sink.events)
    assert set(seen) == {export_uuid(str(e.id)) for e in first} and max(seen.values()) == 1
    # Served: the integration is back on its interval and no third cycle runs.
    await ex.run_due(ids=[integ["id"]])
    assert cycles == [integ["id"]]
    row = await integration_row(sb, integ["id"])
    assert row["status"] == "active" and row["lease_owner"] is None
    assert datetime.fromisoformat(str(row["next_sync_at"])) > datetime.fromisoformat(
        str(row["last_synced_at"])
    )
    await ex.aclose()


@pytest.mark.parametrize("force", [False, True], ids=["due", "forced"])
async def test_a_request_while_the_sink_is_busy_runs_once_more_after_the_cycle(
    sb: AsyncClient,
    export_settings: Settings,
    posthog_sink: PostHogSink,
    api_key: dict[str, Any],
    thread: dict[str, Any],
    force: bool,
) -> None:
    first = await seed(sb, thread, 4)
    integ = await create_posthog(sb, export_settings, posthog_sink, api_key)
    ex = exporter(sb, export_settings)
    cycles = counting(ex)
    posthog_sink.hold()  # the destination is slow: the cycle is in flight
    task = asyncio.create_task(ex.run_due(force=force, ids=[integ["id"]]))
    await wait_until(lambda: posthog_sink.held > 0)
    later = await seed(sb, thread, 3)  # after the cycle read its page
    assert await integrations_db.request_sync(sb, integ["id"], api_key_id=api_key["id"])
    posthog_sink.release()
    outcomes = await task
    assert [o.exported for o in outcomes] == [4]
    assert cycles == [integ["id"]]  # one cycle per integration per pass, even when forced

    # The request is still there: the integration is due now, and runs exactly once more.
    await ex.run_due(ids=[integ["id"]])
    assert cycles == [integ["id"]] * 2
    assert set(Counter(e["uuid"] for e in posthog_sink.events)) == {
        export_uuid(str(e.id)) for e in first + later
    }
    assert len(posthog_sink.events) == 7
    await ex.run_due(ids=[integ["id"]])
    assert cycles == [integ["id"]] * 2
    await ex.aclose()


async def test_a_request_while_idle_is_served_by_one_cycle(
    sb: AsyncClient,
    export_settings: Settings,
    posthog_sink: PostHogSink,
    api_key: dict[str, Any],
    thread: dict[str, Any],
) -> None:
    integ = await create_posthog(sb, export_settings, posthog_sink, api_key)
    ex = exporter(sb, export_settings)
    await ex.run_due(ids=[integ["id"]])  # the first cycle: nothing to send yet
    cycles = counting(ex)
    await ex.run_due(ids=[integ["id"]])
    assert cycles == []  # not due before its interval

    await seed(sb, thread, 2)
    assert await integrations_db.request_sync(sb, integ["id"], api_key_id=api_key["id"])
    assert await integrations_db.request_sync(sb, integ["id"], api_key_id=api_key["id"])
    await ex.run_due(ids=[integ["id"]])
    await ex.run_due(ids=[integ["id"]])
    assert cycles == [integ["id"]]  # two requests before a cycle: that one cycle serves both
    assert len(posthog_sink.events) == 2
    await ex.aclose()


async def test_the_scheduler_runs_the_requested_cycle_right_after_the_one_in_flight(
    sb: AsyncClient,
    export_settings: Settings,
    posthog_sink: PostHogSink,
    api_key: dict[str, Any],
    thread: dict[str, Any],
) -> None:
    await seed(sb, thread, 2)
    integ = await create_posthog(sb, export_settings, posthog_sink, api_key)
    ex = exporter(sb, export_settings)
    cycles = counting(ex)
    scheduler = SyncScheduler(ex, tick_seconds=3600)  # only a wake can start a new pass
    posthog_sink.hold()
    scheduler.start()
    try:
        await wait_until(lambda: posthog_sink.held > 0)
        await seed(sb, thread, 3)
        # What POST /api/integrations/{id}/sync does.
        assert await integrations_db.request_sync(sb, integ["id"], api_key_id=api_key["id"])
        scheduler.wake()
        posthog_sink.release()
        await wait_until(lambda: len(posthog_sink.events) == 5, timeout_seconds=20)
        for _ in range(200):  # the second cycle records its result
            row = await integration_row(sb, integ["id"])
            if row["status"] == "active" and row["events_exported"] == 5:
                break
            await asyncio.sleep(0.02)
        assert row["status"] == "active" and row["events_exported"] == 5
        scheduler.wake()  # another pass finds nothing due
        await asyncio.sleep(0.3)
        assert cycles == [integ["id"]] * 2
    finally:
        await scheduler.stop()
