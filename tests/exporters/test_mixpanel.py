"""Mixpanel exports: /import strict mode, /track's 5-day window, 413 splits, 429 retries."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from supabase import AsyncClient

from flow.config import Settings
from flow.db import integrations as integrations_db
from flow.db.usage import record_usage_events
from flow.exporters.base import CredentialsInvalid, IntegrationInputError, insert_id
from flow.exporters.integrations import create_integration
from flow.exporters.mixpanel import MixpanelCreate
from tests.exporters.conftest import (
    MP_SECRET,
    MP_TOKEN,
    exporter,
    integration_row,
    make_realtime_events,
    seed,
)
from tests.fakes.analytics_sinks import MixpanelSink

pytestmark = pytest.mark.usefixtures("cleanup_integrations")


async def create_mixpanel(
    sb: AsyncClient, settings: Settings, sink: MixpanelSink, api_key: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    body = MixpanelCreate.model_validate(
        {"provider": "mixpanel", "api_host": sink.url, "project_token": MP_TOKEN, **extra}
    )
    return await create_integration(sb, settings, body, api_key_id=api_key["id"])


def insert_ids(sink: MixpanelSink) -> Counter[str]:
    return Counter(e["properties"]["$insert_id"] for e in sink.events)


async def test_import_with_413_and_429_delivers_every_row_once(
    sb: AsyncClient,
    export_settings: Settings,
    mixpanel_sink: MixpanelSink,
    api_key: dict[str, Any],
    thread: dict[str, Any],
) -> None:
    events = await seed(sb, thread, 4500, occurred_at=datetime.now(UTC) - timedelta(days=40))
    integ = await create_mixpanel(
        sb, export_settings, mixpanel_sink, api_key, api_secret=MP_SECRET, backfill="all"
    )
    mixpanel_sink.fail_next(429, times=2, retry_after="0")
    mixpanel_sink.fail_next(503)
    mixpanel_sink.max_body_bytes = 50_000  # a full gzip batch is larger: split
    outcomes = await exporter(sb, export_settings).run_due(force=True, ids=[integ["id"]])
    assert outcomes[0].exported == 4500
    seen = insert_ids(mixpanel_sink)
    assert set(seen) == {insert_id(str(e.id)) for e in events}
    assert max(seen.values()) == 1
    assert set(mixpanel_sink.paths) == {"/import"}
    assert all(len(i) <= 36 for i in seen)
    assert all(r["query"].get("strict") == "1" for r in mixpanel_sink.requests)


async def test_strict_mode_failed_records_are_logged_and_not_resent(
    sb: AsyncClient,
    export_settings: Settings,
    mixpanel_sink: MixpanelSink,
    api_key: dict[str, Any],
    thread: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    events = await seed(sb, thread, 50)
    refused = {insert_id(str(e.id)) for e in events[:3]}
    mixpanel_sink.reject = lambda e: (
        "'properties.model' is not allowed" if e["properties"]["$insert_id"] in refused else None
    )
    integ = await create_mixpanel(
        sb, export_settings, mixpanel_sink, api_key, api_secret=MP_SECRET, backfill="all"
    )
    with caplog.at_level(logging.INFO, logger="flow.exporters"):
        await exporter(sb, export_settings).run_due(force=True, ids=[integ["id"]])
    assert set(insert_ids(mixpanel_sink)) == {insert_id(str(e.id)) for e in events[3:]}
    row = await integration_row(sb, integ["id"])
    assert row["events_exported"] == 47 and row["events_skipped"] == 3
    # The warning callers see is Flow's own; Mixpanel's words are for the operator's log.
    assert "refused by Mixpanel's validation" in row["last_warning"]
    assert "properties.model" not in row["last_warning"]
    reasons = [r for r in caplog.records if "'properties.model' is not allowed" in r.getMessage()]
    assert len(reasons) == 3 and all(r.levelno == logging.INFO for r in reasons)
    requests_before = len(mixpanel_sink.requests)
    await exporter(sb, export_settings).run_due(force=True, ids=[integ["id"]])
    assert len(mixpanel_sink.requests) == requests_before  # nothing resent


async def test_track_reports_events_older_than_5_days_instead_of_dropping_them(
    sb: AsyncClient,
    export_settings: Settings,
    mixpanel_sink: MixpanelSink,
    api_key: dict[str, Any],
    thread: dict[str, Any],
) -> None:
    integ = await create_mixpanel(sb, export_settings, mixpanel_sink, api_key)  # no secret
    fresh = await seed(sb, thread, 20)
    await seed(sb, thread, 5, occurred_at=datetime.now(UTC) - timedelta(days=6))  # late arrivals
    await exporter(sb, export_settings).run_due(force=True, ids=[integ["id"]])
    assert set(insert_ids(mixpanel_sink)) == {insert_id(str(e.id)) for e in fresh}
    assert set(mixpanel_sink.paths) == {"/track"}
    row = await integration_row(sb, integ["id"])
    assert row["status"] == "active"
    assert row["events_exported"] == 20 and row["events_skipped"] == 5
    assert "older than 5 days" in row["last_warning"] and "/import" in row["last_warning"]


async def test_a_backfill_beyond_5_days_without_a_secret_is_refused(
    sb: AsyncClient, export_settings: Settings, mixpanel_sink: MixpanelSink, api_key: dict[str, Any]
) -> None:
    with pytest.raises(IntegrationInputError, match="last 5 days"):
        await create_mixpanel(sb, export_settings, mixpanel_sink, api_key, backfill={"days": 30})


async def test_a_wrong_secret_is_refused_before_saving(
    sb: AsyncClient, export_settings: Settings, mixpanel_sink: MixpanelSink, api_key: dict[str, Any]
) -> None:
    with pytest.raises(CredentialsInvalid, match="bad secret"):
        await create_mixpanel(
            sb, export_settings, mixpanel_sink, api_key, api_secret="not-the-secret"
        )
    assert await integrations_db.list_integrations(sb, api_key_id=api_key["id"]) == []


async def test_mixpanel_events_carry_the_audio_parts(
    sb: AsyncClient,
    export_settings: Settings,
    mixpanel_sink: MixpanelSink,
    api_key: dict[str, Any],
    thread: dict[str, Any],
) -> None:
    spoken = make_realtime_events(thread, 2)
    assert await record_usage_events(sb, spoken) == 2
    integ = await create_mixpanel(
        sb, export_settings, mixpanel_sink, api_key, api_secret=MP_SECRET, backfill="all"
    )
    await exporter(sb, export_settings).run_due(force=True, ids=[integ["id"]])
    by_id = {e["properties"]["$insert_id"]: e["properties"] for e in mixpanel_sink.events}
    for ev in spoken:
        sent = by_id[insert_id(str(ev.id))]
        assert (
            sent["input_audio_tokens"],
            sent["output_audio_tokens"],
            sent["cache_read_audio_tokens"],
        ) == (ev.input_audio_tokens, ev.output_audio_tokens, ev.cache_read_audio_tokens)
