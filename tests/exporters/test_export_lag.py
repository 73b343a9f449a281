"""How far each integration is behind the ledger, as the metrics show it: the rows after
its cursor (and the corrections after its correction cursor) and the age of the oldest,
back to zero once a cycle has exported them; a cycle that fails is counted by
destination."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from supabase import AsyncClient

from flow import metrics
from flow.billing.reprice import reprice
from flow.config import Settings
from flow.db import exports as exports_db
from flow.db.usage import record_usage_events
from flow.exporters.scheduler import SyncScheduler
from flow.metering.events import UsageEvent, UsageKind
from flow.metering.pricing import PriceBook
from tests.exporters.conftest import exporter, seed
from tests.exporters.test_sync import create_posthog
from tests.fakes.analytics_sinks import PostHogSink

pytestmark = pytest.mark.usefixtures("cleanup_integrations")


def lag(iid: str) -> tuple[float | None, float | None]:
    labels = {"provider": "posthog", "integration": iid}
    return (
        metrics.REGISTRY.get_sample_value("flow_export_lag_rows", labels),
        metrics.REGISTRY.get_sample_value("flow_export_lag_seconds", labels),
    )


async def test_lag_counts_unexported_rows_and_their_age_then_falls_to_zero(
    sb: AsyncClient,
    export_settings: Settings,
    posthog_sink: PostHogSink,
    api_key: dict[str, Any],
    thread: dict[str, Any],
) -> None:
    await seed(sb, thread, 7, occurred_at=datetime.now(UTC) - timedelta(hours=2))
    integ = await create_posthog(sb, export_settings, posthog_sink, api_key)
    scheduler = SyncScheduler(exporter(sb, export_settings), tick_seconds=60)
    await scheduler.measure_lag()
    rows, seconds = lag(integ["id"])
    assert rows == 7
    assert seconds is not None and seconds >= 0

    await scheduler.exporter.run_due(force=True, ids=[integ["id"]])
    await scheduler.measure_lag()
    assert lag(integ["id"]) == (0.0, 0.0)
    assert any(str(r["id"]) == integ["id"] for r in await exports_db.export_lag(sb))
    await scheduler.stop()


async def test_a_failed_cycle_is_counted_and_a_deleted_integration_leaves_the_metrics(
    sb: AsyncClient,
    export_settings: Settings,
    posthog_sink: PostHogSink,
    api_key: dict[str, Any],
    thread: dict[str, Any],
) -> None:
    await seed(sb, thread, 3)
    integ = await create_posthog(sb, export_settings, posthog_sink, api_key)
    before = metrics.REGISTRY.get_sample_value("flow_export_errors_total", {"provider": "posthog"})
    posthog_sink.fail_next(401)
    await exporter(sb, export_settings).run_due(force=True, ids=[integ["id"]])
    after = metrics.REGISTRY.get_sample_value("flow_export_errors_total", {"provider": "posthog"})
    assert (after or 0) == (before or 0) + 1

    scheduler = SyncScheduler(exporter(sb, export_settings), tick_seconds=60)
    await scheduler.measure_lag()
    assert lag(integ["id"])[0] == 3
    await sb.table("analytics_integrations").delete().eq("id", integ["id"]).execute()
    await scheduler.measure_lag()
    assert lag(integ["id"]) == (None, None)
    await scheduler.stop()


async def test_a_pending_correction_is_lag_until_it_is_sent(
    sb: AsyncClient,
    export_settings: Settings,
    posthog_sink: PostHogSink,
    api_key: dict[str, Any],
    thread: dict[str, Any],
) -> None:
    unknown = UsageEvent(
        workflow_thread_id=thread["workflow_thread_id"],
        api_key_id=thread["api_key_id"],
        occurred_at=datetime.now(UTC) - timedelta(minutes=30),
        kind=UsageKind.LLM,
        provider="openai",
        model="mystery-model",
        input_tokens=1200,
        output_tokens=80,
    )
    await record_usage_events(sb, [unknown])
    integ = await create_posthog(sb, export_settings, posthog_sink, api_key)
    scheduler = SyncScheduler(exporter(sb, export_settings), tick_seconds=60)
    await scheduler.exporter.run_due(force=True, ids=[integ["id"]])
    await scheduler.measure_lag()
    assert lag(integ["id"]) == (0.0, 0.0)

    book = PriceBook({"mystery-model": {"input": Decimal("2"), "output": Decimal("8")}})
    done = await reprice(sb, book, key_ids=[str(api_key["id"])], apply=True)
    assert done.recorded == 1
    await scheduler.measure_lag()
    rows, seconds = lag(integ["id"])
    assert rows == 1 and seconds is not None and seconds >= 0

    await scheduler.exporter.run_due(force=True, ids=[integ["id"]])
    await scheduler.measure_lag()
    assert lag(integ["id"]) == (0.0, 0.0)
    await scheduler.stop()
