"""The Stripe billing export against a local Stripe (tests/fakes/stripe_server.py) driven
by the official SDK: each billable ledger row billed exactly once, as integer micro-USD
rounded half-up, through 429s, 500s, a restart and two instances; rows that cannot be
billed are skipped and counted; v1 when the stream is missing; only the operator
creates it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import TypeAdapter
from supabase import AsyncClient

from flow.config import Settings
from flow.db import billing as billing_db
from flow.db import keys as keys_repo
from flow.db import operators as operators_repo
from flow.db import threads as threads_repo
from flow.db.client import call, rows_of
from flow.exporters import integrations as service
from flow.exporters.registry import IntegrationCreate
from flow.exporters.stripe import micro_usd, unit_value
from flow.metering.events import UsageEvent, UsageKind
from tests.api.conftest import bearer, local_mode, serve
from tests.api.recording_runner import RecordingRunner
from tests.exporters.conftest import exporter, integration_row, seed, wait_until
from tests.fakes.stripe_server import FakeStripe

SECRET = "sk_test_flowbilling0123456789"


@pytest.fixture
async def stripe_fake() -> AsyncIterator[FakeStripe]:
    fake = FakeStripe(SECRET, customers=set(), meters={"flow_cost"})
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def drop_stripe_integrations(sb: AsyncClient) -> AsyncIterator[None]:
    """After the test: no Stripe integration, and no key billed in Stripe (a later
    integration would bill this test's rows to a customer its fake does not know)."""
    yield
    await forget_stripe(sb)


async def forget_stripe(sb: AsyncClient) -> None:
    await call(sb.table("analytics_integrations").delete().eq("provider", "stripe").execute)
    await call(
        sb.table("api_keys")
        .update({"stripe_customer_id": None})
        .not_.is_("stripe_customer_id", "null")
        .execute
    )


async def customer_key(sb: AsyncClient, fake: FakeStripe | None) -> tuple[dict[str, Any], str]:
    row, plaintext = await keys_repo.create_local_key(sb, f"billed-{uuid.uuid4().hex[:6]}")
    customer = f"cus_{uuid.uuid4().hex[:14]}"
    if fake is not None:
        fake.customers.add(customer)
        await billing_db.set_stripe_customer(sb, str(row["id"]), customer)
    return {**row, "plaintext": plaintext}, customer


async def stripe_integration(
    sb: AsyncClient, settings: Settings, fake: FakeStripe, **fields: Any
) -> str:
    body = TypeAdapter(IntegrationCreate).validate_python(
        {"provider": "stripe", "secret_key": SECRET, "api_base": fake.url, **fields}
    )
    row = await service.create_integration(sb, settings, body, api_key_id=None, all_keys=True)
    return str(row["id"])


def test_cost_is_billed_in_micro_usd_rounded_half_up() -> None:
    assert micro_usd(Decimal("0.0000125")) == 13
    assert micro_usd(Decimal("0.0000124999")) == 12
    assert micro_usd(Decimal("0.0000005")) == 1
    assert micro_usd(Decimal("0.0000004999")) == 0
    assert micro_usd(Decimal("1.2345675")) == 1_234_568
    stt = {"kind": "stt", "audio_seconds": "4.0005"}
    assert unit_value(stt, "stt_milliseconds") == 4001
    assert unit_value(stt, "telephony_milliseconds") == 0
    leg = {"kind": "telephony", "audio_seconds": "61.25"}
    assert unit_value(leg, "telephony_milliseconds") == 61250
    assert unit_value(leg, "stt_milliseconds") == 0
    assert unit_value({"kind": "llm", "input_tokens": 7}, "input_tokens") == 7


async def test_only_the_operator_creates_it_and_its_credentials_are_checked(
    export_settings: Settings,
    sb: AsyncClient,
    stripe_fake: FakeStripe,
    drop_stripe_integrations: None,
) -> None:
    key, _ = await customer_key(sb, stripe_fake)
    _, token = await operators_repo.create_token(sb, "billing ops")
    ops = {"Authorization": f"Bearer {token}"}
    body = {"provider": "stripe", "secret_key": SECRET, "api_base": stripe_fake.url}
    async with serve(local_mode(export_settings), RecordingRunner()) as client:
        as_customer = await client.post("/api/integrations", json=body, headers=bearer(key))
        assert as_customer.status_code == 422, as_customer.text
        assert "operator" in as_customer.json()["message"]
        wrong = await client.post(
            "/api/admin/integrations",
            json={**body, "secret_key": "sk_test_wrongwrong"},
            headers=ops,
        )
        assert wrong.status_code == 422 and wrong.json()["error"] == "invalid_credentials"
        no_meter = await client.post(
            "/api/admin/integrations", json={**body, "event_name": "nothing_here"}, headers=ops
        )
        assert no_meter.status_code == 422 and "nothing_here" in no_meter.json()["message"]
        metadata = await client.post(
            "/api/admin/integrations",
            json={**body, "api_base": "http://169.254.169.254"},
            headers=ops,
        )
        assert metadata.status_code == 400 and metadata.json()["error"] == "url_not_allowed"
        made = await client.post("/api/admin/integrations", json=body, headers=ops)
        assert made.status_code == 201, made.text
        view = made.json()
        assert view["all_keys"] and view["event_name"] == "flow_cost"
        assert SECRET not in made.text and view["host"] == stripe_fake.url
        listed = await client.get("/api/admin/integrations", headers=ops)
        assert view["id"] in {i["id"] for i in listed.json()}
        assert (await client.get("/api/admin/integrations", headers=bearer(key))).status_code == 403


async def bill(sb: AsyncClient, settings: Settings, rounds: int = 20, **kwargs: Any) -> None:
    for _ in range(rounds):
        outcomes = await exporter(sb, settings, **kwargs).run_due(force=True)
        if outcomes and all(o.error is None for o in outcomes):
            return


@pytest.mark.timeout(400)
async def test_a_10000_row_backfill_is_billed_exactly_once_through_faults(
    export_settings: Settings,
    sb: AsyncClient,
    stripe_fake: FakeStripe,
    drop_stripe_integrations: None,
) -> None:
    rows: list[UsageEvent] = []
    customers: dict[str, str] = {}
    for share in (6_000, 3_500):
        key, customer = await customer_key(sb, stripe_fake)
        customers[str(key["id"])] = customer
        thread = await threads_repo.create_thread(sb, api_key_id=key["id"], transport="simulated")
        rows += await seed(sb, thread, share)
    # Not billable: a key with no Stripe customer (skipped and counted).
    unbilled_key, _ = await customer_key(sb, None)
    thread = await threads_repo.create_thread(
        sb, api_key_id=unbilled_key["id"], transport="simulated"
    )
    unbilled = await seed(sb, thread, 400)
    start = datetime.now(UTC) - timedelta(hours=3)
    iid = await stripe_integration(
        sb, export_settings, stripe_fake, backfill={"from": start.isoformat()}
    )
    backlog = await exporter(sb, export_settings).backlog(iid)
    # Corrections of repricings (from other tests) go out after the ledger, skipped here.
    earlier = rows_of(
        await call(
            sb.table("usage_corrections").select("id").gte("occurred_at", start.isoformat()).execute
        )
    )
    assert backlog >= len(rows) + len(unbilled)

    # 429s (with Retry-After) and 500s on the way.
    stripe_fake.pass_next(3)
    stripe_fake.fail_next(429, 2, retry_after="0")
    stripe_fake.pass_next(5)
    stripe_fake.fail_next(500, 3)

    # A restart: the first instance is stopped in the middle of the backfill.
    first = asyncio.create_task(exporter(sb, export_settings).run_due(force=True))
    await wait_until(lambda: len(stripe_fake.billed) >= 3_000 or first.done(), 120)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert 0 < len(stripe_fake.billed) < len(rows)

    # Then two instances at once, through more 500s.
    stripe_fake.fail_next(500, 2)
    await asyncio.gather(bill(sb, export_settings), bill(sb, export_settings))
    await bill(sb, export_settings)

    ours = {str(e.id): e for e in rows}
    billed = {i: ev for i, ev in stripe_fake.billed.items() if i in ours}
    assert set(billed) == set(ours), "every billable row billed"
    assert set(stripe_fake.billed) == set(ours), "nothing else billed"
    assert not stripe_fake.invalid
    for ledger_id, event in billed.items():
        row = ours[ledger_id]
        assert event["value"] == micro_usd(row.cost_usd or Decimal(0))
        assert event["payload"]["stripe_customer_id"] == customers[str(row.api_key_id)]
        assert event["event_name"] == "flow_cost"
        assert abs(event["timestamp"] - row.occurred_at) < timedelta(milliseconds=1)
    ledger_cost = sum((e.cost_usd or Decimal(0) for e in rows), Decimal(0))
    billed_usd = Decimal(sum(e["value"] for e in billed.values())) / 1_000_000
    assert abs(billed_usd - ledger_cost) <= Decimal("0.0000005") * len(rows)
    state = await integration_row(sb, iid)
    assert state["status"] == "active" and state["last_error"] is None
    assert state["events_exported"] == len(rows)
    assert state["events_skipped"] == backlog - len(rows) + len(earlier)
    assert "no Stripe customer" in (state["last_warning"] or "")
    print(
        f"\nstripe backfill: {len(rows)} billed once, {stripe_fake.duplicates} resent "
        f"identifiers deduplicated, {state['events_skipped']} skipped, "
        f"{stripe_fake.stream_requests} stream requests; rounding "
        f"{billed_usd - ledger_cost:+} USD"
    )


async def test_v1_fallback_unit_meters_skips_and_a_resend_bills_nothing_twice(
    export_settings: Settings,
    sb: AsyncClient,
    stripe_fake: FakeStripe,
    drop_stripe_integrations: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stripe_fake.v2_enabled = False
    stripe_fake.meters |= {"flow_tts_chars", "flow_input_tokens", "flow_phone_ms"}
    key, customer = await customer_key(sb, stripe_fake)
    thread = await threads_repo.create_thread(sb, api_key_id=key["id"], transport="simulated")
    now = datetime.now(UTC)
    events = [
        UsageEvent(
            workflow_thread_id=thread["workflow_thread_id"],
            api_key_id=key["id"],
            occurred_at=now - timedelta(minutes=5),
            kind=UsageKind.TTS,
            provider="openai",
            model="tts-1",
            characters=120,
            cost_usd=Decimal("0.0018"),
        ),
        UsageEvent(
            workflow_thread_id=thread["workflow_thread_id"],
            api_key_id=key["id"],
            occurred_at=now - timedelta(minutes=4),
            kind=UsageKind.LLM,
            provider="openai",
            model="mystery-model",
            input_tokens=50,
        ),
        UsageEvent(
            workflow_thread_id=thread["workflow_thread_id"],
            api_key_id=key["id"],
            occurred_at=now - timedelta(days=40),
            kind=UsageKind.LLM,
            provider="openai",
            model="gpt-4o-mini",
            input_tokens=10,
            cost_usd=Decimal("0.0000015"),
        ),
        UsageEvent(
            workflow_thread_id=thread["workflow_thread_id"],
            api_key_id=key["id"],
            occurred_at=now - timedelta(minutes=3),
            kind=UsageKind.TELEPHONY,
            provider="twilio",
            model="inbound",
            audio_seconds=Decimal("61.25"),
            cost_usd=Decimal("0.017"),
        ),
    ]
    from flow.db.usage import record_usage_events

    await record_usage_events(sb, events)
    iid = await stripe_integration(
        sb,
        export_settings,
        stripe_fake,
        backfill={"from": (now - timedelta(days=41)).isoformat()},
        unit_meters={
            "tts_characters": "flow_tts_chars",
            "input_tokens": "flow_input_tokens",
            "telephony_milliseconds": "flow_phone_ms",
        },
    )
    await bill(sb, export_settings)
    tts = str(events[0].id)
    mine = {i: e for i, e in stripe_fake.billed.items() if i.startswith(tts)}
    assert mine[tts]["value"] == 1800 and mine[tts]["event_name"] == "flow_cost"
    assert mine[f"{tts}-tts_characters"]["value"] == 120
    assert f"{tts}-input_tokens" not in mine  # a TTS row used no tokens
    assert f"{tts}-telephony_milliseconds" not in mine
    leg = str(events[3].id)
    assert stripe_fake.billed[leg]["value"] == 17000  # a phone call leg, billed like any row
    assert stripe_fake.billed[f"{leg}-telephony_milliseconds"]["value"] == 61250
    assert stripe_fake.billed[f"{leg}-telephony_milliseconds"]["event_name"] == "flow_phone_ms"
    assert str(events[1].id) not in stripe_fake.billed  # unpriced
    assert str(events[2].id) not in stripe_fake.billed  # older than 35 days
    assert stripe_fake.stream_requests == 0 and stripe_fake.v1_requests >= 2
    state = await integration_row(sb, iid)
    assert state["events_skipped"] >= 2 and state["last_warning"]
    skipped = {r.getMessage() for r in caplog.records if "not exported" in r.getMessage()}
    assert any(str(events[1].id) in m and "unpriced" in m for m in skipped), skipped
    assert any(str(events[2].id) in m and "35 days" in m for m in skipped), skipped

    # The cursor moved back (a lost answer, say): the resend bills nothing twice.
    billed_before = dict(stripe_fake.billed)
    await call(
        sb.table("analytics_integrations")
        .update({"cursor_txid": "0", "cursor_seq": 0})
        .eq("id", iid)
        .execute
    )
    await bill(sb, export_settings)
    assert stripe_fake.billed == billed_before
    assert stripe_fake.duplicates >= 2
    assert customer in {e["payload"]["stripe_customer_id"] for e in mine.values()}


async def test_an_expired_session_is_renewed_and_a_revoked_key_surfaces_in_the_status(
    export_settings: Settings,
    sb: AsyncClient,
    stripe_fake: FakeStripe,
    drop_stripe_integrations: None,
) -> None:
    key, _ = await customer_key(sb, stripe_fake)
    thread = await threads_repo.create_thread(sb, api_key_id=key["id"], transport="simulated")
    first = await seed(sb, thread, 30)
    iid = await stripe_integration(sb, export_settings, stripe_fake, backfill="all")
    the_exporter = exporter(sb, export_settings)
    await the_exporter.run_due(force=True)
    assert {str(e.id) for e in first} <= set(stripe_fake.billed)
    for token in stripe_fake.sessions:  # Stripe expires the session under the exporter
        stripe_fake.sessions[token] = 0
    second = await seed(sb, thread, 30)
    [outcome] = await the_exporter.run_due(force=True, ids=[iid])
    assert outcome.error is None
    assert {str(e.id) for e in second} <= set(stripe_fake.billed)

    stripe_fake.secret_key = "sk_test_rotatedrotated"
    await seed(sb, thread, 5)
    [outcome] = await exporter(sb, export_settings).run_due(force=True, ids=[iid])
    state = await integration_row(sb, iid)
    assert state["status"] == "error"
    assert "rejected the secret key" in state["last_error"]
    assert SECRET not in state["last_error"]
