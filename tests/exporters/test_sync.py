"""Sync cycles against the real ledger and local sinks: exactly once through backfills,
failures, restarts, concurrent instances, pauses, bad keys and out-of-order commits."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from supabase import AsyncClient

from flow import localstack
from flow.config import Settings
from flow.db import integrations as integrations_db
from flow.db.usage import record_usage_events
from flow.exporters.base import export_uuid
from flow.exporters.integrations import create_integration
from flow.exporters.lease import Lease
from flow.exporters.posthog import PostHogCreate
from flow.exporters.sync import Exporter
from flow.metering.events import UsageEvent, UsageKind
from flow.metering.pricing import PriceBook, cost_fields
from tests.exporters.conftest import (
    PH_KEY,
    exporter,
    integration_row,
    make_realtime_events,
    seed,
    wait_until,
)
from tests.fakes.analytics_sinks import PostHogSink

pytestmark = pytest.mark.usefixtures("cleanup_integrations")


async def create_posthog(
    sb: AsyncClient,
    settings: Settings,
    sink: PostHogSink,
    api_key: dict[str, Any],
    backfill: Any = "all",
    **extra: Any,
) -> dict[str, Any]:
    body = PostHogCreate.model_validate(
        {
            "provider": "posthog",
            "host": sink.url,
            "project_api_key": PH_KEY,
            "backfill": backfill,
            **extra,
        }
    )
    return await create_integration(sb, settings, body, api_key_id=api_key["id"])


def uuids_of(sink: PostHogSink) -> Counter[str]:
    return Counter(e["uuid"] for e in sink.events)


def expected(events: list[Any]) -> set[str]:
    return {export_uuid(str(e.id)) for e in events}


async def test_backfill_of_10000_events_arrives_exactly_once_through_sink_failures(
    sb: AsyncClient,
    export_settings: Settings,
    posthog_sink: PostHogSink,
    api_key: dict[str, Any],
    thread: dict[str, Any],
) -> None:
    events = await seed(sb, thread, 10_000, occurred_at=datetime.now(UTC) - timedelta(days=2))
    integ = await create_posthog(sb, export_settings, posthog_sink, api_key)
    # 5xx twice, then a 429 with Retry-After, then a body over the limit (split in halves).
    posthog_sink.fail_next(500, times=2)
    posthog_sink.fail_next(429, retry_after="0")
    posthog_sink.max_body_bytes = 60_000

    outcomes = await exporter(sb, export_settings).run_due(force=True, ids=[integ["id"]])

    seen = uuids_of(posthog_sink)
    assert set(seen) == expected(events)
    assert max(seen.values()) == 1
    assert len(posthog_sink.events) == 10_000
    assert outcomes[0].exported == 10_000 and outcomes[0].error is None
    row = await integration_row(sb, integ["id"])
    assert row["status"] == "active"
    assert row["events_exported"] == 10_000
    assert row["last_synced_at"] is not None
    # Events from before the integration existed are a backfill for PostHog.
    assert all(posthog_sink.historical_flags)
    first = next(e for e in posthog_sink.events if e["uuid"] == export_uuid(str(events[0].id)))
    assert first["event"] == "prism_request"
    assert first["distinct_id"] == export_settings.flow_export_source_id
    assert first["timestamp"].startswith(events[0].occurred_at.date().isoformat())
    assert first["properties"]["total_tokens"] == 120
    assert first["properties"]["cost"] == Decimal("0.0000123457")


async def test_cost_is_a_number_with_the_ledger_digits(
    sb: AsyncClient,
    export_settings: Settings,
    posthog_sink: PostHogSink,
    api_key: dict[str, Any],
    thread: dict[str, Any],
) -> None:
    events = await seed(sb, thread, 3)
    integ = await create_posthog(
        sb, export_settings, posthog_sink, api_key, event_name="llm_call", distinct_id="end_user"
    )
    dest_rows = await exporter(sb, export_settings).run_due(force=True, ids=[integ["id"]])
    assert dest_rows[0].exported == 3
    by_uuid = {e["uuid"]: e for e in posthog_sink.events}
    for ev in events:
        sent = by_uuid[export_uuid(str(ev.id))]
        assert sent["event"] == "llm_call"
        assert sent["distinct_id"] == ev.end_user_id
        assert isinstance(sent["properties"]["cost"], Decimal)  # a JSON number, not a string
        assert sent["properties"]["cost"] == ev.cost_usd
        assert sent["properties"]["api_key_id"] == str(ev.api_key_id)


async def test_restart_mid_sync_resumes_from_the_cursor(
    sb: AsyncClient,
    export_settings: Settings,
    posthog_sink: PostHogSink,
    api_key: dict[str, Any],
    thread: dict[str, Any],
) -> None:
    events = await seed(sb, thread, 5000)
    integ = await create_posthog(sb, export_settings, posthog_sink, api_key)
    first = exporter(sb, export_settings, page_size=1000)
    task = asyncio.create_task(first.run_due(force=True, ids=[integ["id"]]))
    await wait_until(lambda: len(posthog_sink.events) >= 2000)
    posthog_sink.hold()
    await wait_until(lambda: posthog_sink.held > 0)
    task.cancel()  # the instance stops while a batch is in flight
    with pytest.raises(asyncio.CancelledError):
        await task
    posthog_sink.release()
    await first.aclose()
    row = await integration_row(sb, integ["id"])
    assert 0 < row["events_exported"] < 5000
    assert row["lease_owner"] is None

    second = exporter(sb, export_settings, page_size=1000)
    await second.run_due(force=True, ids=[integ["id"]])
    seen = uuids_of(posthog_sink)
    assert set(seen) == expected(events)
    assert max(seen.values()) == 1
    assert (await integration_row(sb, integ["id"]))["events_exported"] == 5000


async def test_a_crashed_instance_lease_expires_and_another_resumes(
    sb: AsyncClient,
    export_settings: Settings,
    posthog_sink: PostHogSink,
    api_key: dict[str, Any],
    thread: dict[str, Any],
) -> None:
    events = await seed(sb, thread, 1500)
    integ = await create_posthog(sb, export_settings, posthog_sink, api_key)
    crashed = exporter(sb, export_settings, lease_seconds=1)
    assert await crashed.claim(force=True, ids=[integ["id"]])  # and then never releases
    survivor = exporter(sb, export_settings)
    assert await survivor.run_due(force=True, ids=[integ["id"]]) == []
    await asyncio.sleep(1.2)
    outcomes = await survivor.run_due(force=True, ids=[integ["id"]])
    assert outcomes[0].exported == 1500
    assert set(uuids_of(posthog_sink)) == expected(events)


async def test_two_instances_syncing_at_once_send_each_event_once(
    sb: AsyncClient,
    export_settings: Settings,
    posthog_sink: PostHogSink,
    api_key: dict[str, Any],
    thread: dict[str, Any],
) -> None:
    events = await seed(sb, thread, 4000)
    integ = await create_posthog(sb, export_settings, posthog_sink, api_key)
    a = exporter(sb, export_settings, page_size=500)
    b = exporter(sb, export_settings, page_size=500)
    results = await asyncio.gather(
        *(x.run_due(force=True, ids=[integ["id"]]) for x in (a, b, a, b))
    )
    winners = [r for r in results if r]
    assert len(winners) == 1 and winners[0][0].exported == 4000
    seen = uuids_of(posthog_sink)
    assert set(seen) == expected(events)
    assert max(seen.values()) == 1


async def test_pause_stops_sending(
    sb: AsyncClient,
    export_settings: Settings,
    posthog_sink: PostHogSink,
    api_key: dict[str, Any],
    thread: dict[str, Any],
) -> None:
    await seed(sb, thread, 3000)
    integ = await create_posthog(sb, export_settings, posthog_sink, api_key)
    ex = exporter(sb, export_settings, page_size=500)
    task = asyncio.create_task(ex.run_due(force=True, ids=[integ["id"]]))
    await wait_until(lambda: len(posthog_sink.events) >= 500)
    posthog_sink.hold()
    await integrations_db.pause_integration(sb, integ["id"], api_key_id=api_key["id"])
    posthog_sink.release()
    await task
    sent = len(posthog_sink.events)
    assert sent < 3000
    row = await integration_row(sb, integ["id"])
    assert row["status"] == "paused" and row["lease_owner"] is None
    assert row["events_exported"] == sent
    assert await ex.run_due(force=True, ids=[integ["id"]]) == []
    assert len(posthog_sink.events) == sent

    await integrations_db.resume_integration(sb, integ["id"], api_key_id=api_key["id"])
    await ex.run_due(ids=[integ["id"]])
    assert len(posthog_sink.events) == 3000


async def test_a_wrong_key_ends_in_error(
    sb: AsyncClient,
    export_settings: Settings,
    posthog_sink: PostHogSink,
    api_key: dict[str, Any],
    thread: dict[str, Any],
) -> None:
    await seed(sb, thread, 10)
    integ = await create_posthog(sb, export_settings, posthog_sink, api_key)
    posthog_sink.valid_keys.clear()  # the project key was revoked
    outcomes = await exporter(sb, export_settings).run_due(force=True, ids=[integ["id"]])
    assert outcomes[0].status == "error"
    row = await integration_row(sb, integ["id"])
    assert row["status"] == "error"
    assert "rejected the project API key" in row["last_error"]
    assert row["events_exported"] == 0 and row["cursor_seq"] == 0
    assert posthog_sink.events == []
    # An integration in error is not synced until its credentials are fixed.
    assert await exporter(sb, export_settings).run_due(force=True, ids=[integ["id"]]) == []


async def test_rows_committed_out_of_order_around_the_cursor_are_not_skipped(
    sb: AsyncClient,
    stack: localstack.StackInfo,
    export_settings: Settings,
    posthog_sink: PostHogSink,
    api_key: dict[str, Any],
    thread: dict[str, Any],
) -> None:
    integ = await create_posthog(sb, export_settings, posthog_sink, api_key)
    before = await seed(sb, thread, 5)
    # A writer takes a seq and stays open while later rows (higher seq) commit.
    psql = await asyncio.create_subprocess_exec(
        str(localstack.PG_BIN / "psql"),
        stack.database_url,
        "-X",
        "-q",
        "-At",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert psql.stdin is not None and psql.stdout is not None
    late_id = "5e7a1e00-0000-4000-8000-000000000001"
    psql.stdin.write(
        (
            "begin;\n"
            "insert into usage_events (id, workflow_thread_id, api_key_id, occurred_at, kind,"
            " provider, model, input_tokens, output_tokens, cost_usd)"
            f" values ('{late_id}', '{thread['workflow_thread_id']}', '{api_key['id']}',"
            " now(), 'llm', 'openai', 'gpt-4o-mini', 1, 1, 0.5) returning seq;\n"
        ).encode()
    )
    await psql.stdin.drain()
    late_seq = int((await psql.stdout.readline()).decode().strip())
    after = await seed(sb, thread, 5)  # committed, seq above the open row's

    ex = exporter(sb, export_settings)
    await ex.run_due(force=True, ids=[integ["id"]])
    row = await integration_row(sb, integ["id"])
    assert row["cursor_seq"] < late_seq  # never moved past the open row
    sent = set(uuids_of(posthog_sink))
    assert expected(before) <= sent
    assert export_uuid(late_id) not in sent

    psql.stdin.write(b"commit;\n")
    await psql.stdin.drain()
    psql.stdin.close()
    await psql.wait()
    await ex.run_due(force=True, ids=[integ["id"]])
    seen = uuids_of(posthog_sink)
    assert set(seen) == expected(before) | expected(after) | {export_uuid(late_id)}
    assert max(seen.values()) == 1


async def test_export_events_carry_the_audio_parts(
    sb: AsyncClient,
    export_settings: Settings,
    posthog_sink: PostHogSink,
    api_key: dict[str, Any],
    thread: dict[str, Any],
) -> None:
    spoken = make_realtime_events(thread, 3)
    text = await seed(sb, thread, 2)
    assert await record_usage_events(sb, spoken) == 3
    integ = await create_posthog(sb, export_settings, posthog_sink, api_key)
    outcomes = await exporter(sb, export_settings).run_due(force=True, ids=[integ["id"]])
    assert outcomes[0].exported == 5
    by_uuid = {e["uuid"]: e["properties"] for e in posthog_sink.events}
    for ev in [*spoken, *text]:
        sent = by_uuid[export_uuid(str(ev.id))]
        assert (
            sent["input_audio_tokens"],
            sent["output_audio_tokens"],
            sent["cache_read_audio_tokens"],
        ) == (ev.input_audio_tokens, ev.output_audio_tokens, ev.cache_read_audio_tokens)
        assert sent["input_tokens"] == ev.input_tokens
    assert by_uuid[export_uuid(str(spoken[1].id))]["input_audio_tokens"] == 1_501


async def test_a_phone_call_leg_is_exported_like_any_usage(
    sb: AsyncClient,
    export_settings: Settings,
    posthog_sink: PostHogSink,
    api_key: dict[str, Any],
    thread: dict[str, Any],
) -> None:
    seconds = Decimal("61.500")
    leg = UsageEvent(
        workflow_thread_id=thread["workflow_thread_id"],
        api_key_id=thread["api_key_id"],
        kind=UsageKind.TELEPHONY,
        provider="twilio",
        model="outbound",
        audio_seconds=seconds,
        **cost_fields(PriceBook().telephony("twilio", "outbound", seconds)),
    )
    assert await record_usage_events(sb, [leg]) == 1
    integ = await create_posthog(sb, export_settings, posthog_sink, api_key)
    outcomes = await exporter(sb, export_settings).run_due(force=True, ids=[integ["id"]])
    assert outcomes[0].exported == 1
    [sent] = posthog_sink.events
    assert sent["uuid"] == export_uuid(str(leg.id))
    p = sent["properties"]
    assert (p["kind"], p["provider"], p["model"]) == ("telephony", "twilio", "outbound")
    assert Decimal(str(p["cost"])) == Decimal("0.028")  # two started minutes


async def test_a_fault_of_flows_own_releases_the_lease_and_the_pass_goes_on(
    sb: AsyncClient,
    export_settings: Settings,
    posthog_sink: PostHogSink,
    api_key: dict[str, Any],
    thread: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = await seed(sb, thread, 20)
    broken = await create_posthog(sb, export_settings, posthog_sink, api_key)
    sound = await create_posthog(sb, export_settings, posthog_sink, api_key)
    deliver = Exporter._deliver

    async def fail_for_one(self: Exporter, lease: Lease, *args: Any) -> Any:
        if lease.iid == broken["id"]:
            raise RuntimeError("a bug, with a secret: phc_do_not_show")
        return await deliver(self, lease, *args)

    monkeypatch.setattr(Exporter, "_deliver", fail_for_one)
    ids = [broken["id"], sound["id"]]
    outcomes = {
        o.integration_id: o
        for o in await exporter(sb, export_settings).run_due(force=True, ids=ids)
    }
    assert set(outcomes) == set(ids)
    assert outcomes[sound["id"]].exported == len(events) and not outcomes[sound["id"]].error
    failed = await integration_row(sb, broken["id"])
    assert failed["status"] == "active" and failed["lease_owner"] is None
    assert failed["last_error"] == "internal error (RuntimeError), retrying later"
    assert failed["cursor_seq"] == 0
    # Once fixed, the next cycle sends what the failed one did not: each event once.
    monkeypatch.setattr(Exporter, "_deliver", deliver)
    again = await exporter(sb, export_settings).run_due(force=True, ids=[broken["id"]])
    assert again[0].exported == len(events)
    assert set(uuids_of(posthog_sink).values()) == {2}
