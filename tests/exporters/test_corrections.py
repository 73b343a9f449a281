"""Repriced events in the exports: every destination gets the original as it was
recorded (unpriced) and the correction once, as a new event naming the original,
whether it exported the original before or after the repricing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import TypeAdapter
from supabase import AsyncClient

from flow.billing.reprice import reprice
from flow.config import Settings
from flow.db import billing as billing_db
from flow.db import keys as keys_repo
from flow.db import threads as threads_repo
from flow.db.client import call
from flow.db.usage import record_usage_events
from flow.exporters.base import export_uuid
from flow.exporters.integrations import create_integration
from flow.exporters.registry import IntegrationCreate
from flow.exporters.stripe import micro_usd
from flow.metering.events import UsageEvent, UsageKind
from flow.metering.pricing import PriceBook
from tests.exporters.conftest import PH_KEY, exporter
from tests.exporters.test_stripe import forget_stripe
from tests.fakes.analytics_sinks import PostHogSink
from tests.fakes.stripe_server import FakeStripe

BOOK = PriceBook({"mystery-model": {"input": Decimal("2"), "output": Decimal("8")}})
SECRET = "sk_test_corrections0123456789"


@pytest.fixture
async def key(sb: AsyncClient) -> AsyncIterator[dict[str, Any]]:
    row, _ = await keys_repo.create_local_key(sb, f"corrections-{uuid.uuid4().hex[:6]}")
    yield row
    await call(sb.table("analytics_integrations").delete().eq("api_key_id", row["id"]).execute)
    await forget_stripe(sb)


async def posthog(
    sb: AsyncClient, settings: Settings, key: dict[str, Any], sink: PostHogSink
) -> str:
    body = TypeAdapter(IntegrationCreate).validate_python(
        {"provider": "posthog", "host": sink.url, "project_api_key": PH_KEY, "backfill": "all"}
    )
    return str((await create_integration(sb, settings, body, api_key_id=key["id"]))["id"])


async def test_a_repriced_event_is_exported_once_as_recorded_and_once_as_a_correction(
    export_settings: Settings, sb: AsyncClient, key: dict[str, Any], posthog_sink: PostHogSink
) -> None:
    fake = FakeStripe(SECRET, customers={"cus_corrections1"}, meters={"flow_cost"})
    await fake.start()
    try:
        await billing_db.set_stripe_customer(sb, str(key["id"]), "cus_corrections1")
        thread = await threads_repo.create_thread(sb, api_key_id=key["id"], transport="simulated")
        at = datetime.now(UTC) - timedelta(hours=1)
        events = [
            UsageEvent(
                workflow_thread_id=thread["workflow_thread_id"],
                api_key_id=key["id"],
                occurred_at=at + timedelta(seconds=n),
                kind=UsageKind.LLM,
                provider="openai",
                model="mystery-model",
                input_tokens=1000 + n,
                output_tokens=50,
            )
            for n in range(3)
        ]
        await record_usage_events(sb, events)
        before = await posthog(sb, export_settings, key, posthog_sink)
        stripe_body = TypeAdapter(IntegrationCreate).validate_python(
            {"provider": "stripe", "secret_key": SECRET, "api_base": fake.url, "backfill": "all"}
        )
        await create_integration(sb, export_settings, stripe_body, api_key_id=None, all_keys=True)
        await exporter(sb, export_settings).run_due(force=True)
        ids = {str(e.id) for e in events}
        exported = [
            e
            for e in posthog_sink.events
            if e["properties"]["workflow_thread_id"] == str(thread["workflow_thread_id"])
        ]
        assert len(exported) == 3 and all(e["properties"]["cost"] is None for e in exported)
        assert not ids & set(fake.billed)  # unpriced: skipped by Stripe

        summary = await reprice(sb, BOOK, key_ids=[str(key["id"])], apply=True)
        assert summary.recorded == 3
        # A destination added after the repricing gets the same: original unpriced, then
        # the correction.
        after = await posthog(sb, export_settings, key, posthog_sink)
        await exporter(sb, export_settings).run_due(force=True)
        await exporter(sb, export_settings).run_due(force=True)  # nothing twice

        mine = [
            e
            for e in posthog_sink.events
            if e["properties"]["workflow_thread_id"] == str(thread["workflow_thread_id"])
        ]
        assert len(mine) == 12  # 3 originals + 3 corrections, to each of two projects
        corrections = [e for e in mine if "corrects" in e["properties"]]
        assert len(corrections) == 6
        assert {c["properties"]["corrects"] for c in corrections} == ids
        assert len({c["uuid"] for c in corrections}) == 3  # one correction, one uuid
        assert not {c["uuid"] for c in corrections} & {export_uuid(i) for i in ids}
        originals = [e for e in mine if "corrects" not in e["properties"]]
        assert all(e["properties"]["cost"] is None for e in originals)
        price = {
            str(e.id): (e.input_tokens * 2 + e.output_tokens * 8) / Decimal(10**6) for e in events
        }
        for c in corrections:
            assert Decimal(str(c["properties"]["cost"])) == price[c["properties"]["corrects"]]
            assert c["properties"]["input_tokens"] == 0

        billed = [
            b
            for b in fake.billed.values()
            if b["payload"]["stripe_customer_id"] == "cus_corrections1"
        ]
        assert len(billed) == 3
        assert sorted(b["value"] for b in billed) == sorted(micro_usd(p) for p in price.values())
        assert not ids & set(fake.billed)  # billed under the corrections' own ids
        assert before != after
    finally:
        await fake.stop()
