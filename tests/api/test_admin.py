"""The operator's credential and API: a token made by ``flow admin-token create`` sees
every key's usage and calls under /api/admin/; a customer key there is 403, no token
401; a call's ledger rows and a key's paged call list for customers."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from supabase import AsyncClient

from flow import localstack
from flow.db import budgets
from flow.db import keys as keys_repo
from flow.db import operators as operators_repo
from flow.db import threads as threads_repo
from flow.db.usage import record_usage_events
from flow.metering.events import UsageEvent
from tests.api.conftest import bearer
from tests.integration.test_cli_usage import flow_cli
from tests.integration.test_ledger import llm_event, stt_event, telephony_event, tts_event


async def operator(sb: AsyncClient) -> dict[str, str]:
    _, plaintext = await operators_repo.create_token(sb, f"ops-{uuid.uuid4().hex[:6]}")
    return {"Authorization": f"Bearer {plaintext}"}


async def seeded_key(
    sb: AsyncClient, *, calls: int, at: datetime, rnd: random.Random
) -> tuple[dict[str, Any], list[dict[str, Any]], list[UsageEvent]]:
    row, plaintext = await keys_repo.create_local_key(sb, f"cust-{uuid.uuid4().hex[:6]}")
    key = {**row, "plaintext": plaintext}
    threads, events = [], []
    for n in range(calls):
        started = at + timedelta(minutes=10 * n)
        thread = await threads_repo.create_thread(
            sb,
            api_key_id=row["id"],
            transport="simulated",
            end_user_id=f"user-{n % 2}",
            bot_started_at=started.isoformat(),
            bot_ended_at=(started + timedelta(seconds=90)).isoformat(),
        )
        threads.append(thread)
        t = started + timedelta(seconds=5)
        events += [
            llm_event(thread, occurred_at=t, end_user_id=thread["end_user_id"]),
            tts_event(thread, rnd.randint(20, 300)).model_copy(update={"occurred_at": t}),
            stt_event(thread, "3.250").model_copy(update={"occurred_at": t}),
            telephony_event(thread, "95.000").model_copy(update={"occurred_at": t}),
        ]
    await record_usage_events(sb, events)
    return key, threads, events


async def test_admin_token_from_the_cli_sees_every_key_a_customer_key_does_not(
    stack: localstack.StackInfo, sb: AsyncClient, client: httpx.AsyncClient
) -> None:
    name = f"ops-{uuid.uuid4().hex[:6]}"
    made = flow_cli(stack, "admin-token", "create", "--name", name)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    assert token.startswith("flow_op_")
    [stored] = await operators_repo.find_tokens(sb, name)
    assert "token_hash" not in stored and token not in str(stored)
    ops = {"Authorization": f"Bearer {token}"}
    customer, _ = await keys_repo.create_local_key(sb, "a customer")
    plain = await keys_repo.create_local_key(sb, "another customer")

    ok = await client.get("/api/admin/usage", headers=ops)
    assert ok.status_code == 200, ok.text
    listed = {k["api_key_id"] for k in ok.json()["keys"]}
    assert {str(customer["id"]), str(plain[0]["id"])} <= listed

    as_customer = await client.get("/api/admin/usage", headers=bearer({"plaintext": plain[1]}))
    assert as_customer.status_code == 403
    assert as_customer.json()["error"] == "operator_only"
    nobody = await client.get("/api/admin/usage")
    assert nobody.status_code == 401 and nobody.headers["WWW-Authenticate"].startswith("Bearer")
    forged = await client.get("/api/admin/usage", headers={"Authorization": "Bearer flow_op_nope"})
    assert forged.status_code == 401
    # An operator token is not a customer key.
    assert (await client.get("/api/usage", headers=ops)).status_code == 401

    revoked = flow_cli(stack, "admin-token", "revoke", name)
    assert revoked.returncode == 0, revoked.stderr
    assert (await client.get("/api/admin/usage", headers=ops)).status_code == 401
    again = flow_cli(stack, "admin-token", "revoke", name)
    assert again.returncode == 1


async def test_admin_endpoints_are_in_the_openapi_schema_behind_the_operator_token(
    client: httpx.AsyncClient,
) -> None:
    schema = (await client.get("/openapi.json")).json()
    admin_paths = [p for p in schema["paths"] if p.startswith("/api/admin/")]
    assert {"/api/admin/usage", "/api/admin/calls", "/api/admin/calls/{workflow_thread_id}"} <= set(
        admin_paths
    )
    for path in admin_paths:
        for op in schema["paths"][path].values():
            assert {"OperatorToken": []} in op["security"], path
            assert "403" in op["responses"]
    assert schema["components"]["securitySchemes"]["OperatorToken"]["scheme"] == "bearer"


async def test_every_keys_usage_equals_its_ledger_rows_costliest_first(
    sb: AsyncClient, client: httpx.AsyncClient
) -> None:
    rnd = random.Random(5)
    at = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    small, _, small_events = await seeded_key(sb, calls=1, at=at, rnd=rnd)
    big, _, big_events = await seeded_key(sb, calls=3, at=at, rnd=rnd)
    limits = budgets.Budget(Decimal(20), period="month", max_concurrent_calls=4)
    await budgets.set_budget(sb, str(big["id"]), limits)
    ops = await operator(sb)
    # Partial hours at both ends: whole hours from the rollups, the rest from the ledger.
    params = {"start": "2026-03-10T11:30:00Z", "end": "2026-03-10T12:40:00Z"}
    resp = await client.get("/api/admin/usage", params=params, headers=ops)
    assert resp.status_code == 200, resp.text
    keys = resp.json()["keys"]
    ours = [k for k in keys if k["api_key_id"] in {str(small["id"]), str(big["id"])}]
    assert [k["api_key_id"] for k in ours] == [str(big["id"]), str(small["id"])]
    costs = [Decimal(k["cost_usd"]) for k in keys]
    assert costs == sorted(costs, reverse=True)
    for key, events in ((small, small_events), (big, big_events)):
        [got] = [k for k in keys if k["api_key_id"] == str(key["id"])]
        calls = len({e.workflow_thread_id for e in events})
        assert got["calls"] == calls
        assert Decimal(got["minutes"]) == Decimal("1.5") * calls
        assert Decimal(got["cost_usd"]) == sum(e.cost_usd or 0 for e in events)
        assert got["input_tokens"] == sum(e.input_tokens for e in events)
        assert got["tts_characters"] == sum(e.characters for e in events)
        for kind in ("stt", "telephony"):
            seconds = sum(e.audio_seconds for e in events if e.kind == kind)
            assert seconds > 0 and Decimal(got[f"{kind}_seconds"]) == seconds, kind
        by_kind: dict[str, Decimal] = {}
        for e in events:
            by_kind[str(e.kind)] = by_kind.get(str(e.kind), Decimal(0)) + (e.cost_usd or 0)
        assert {k: Decimal(v) for k, v in got["cost_by_kind"].items()} == by_kind
        assert set(by_kind) == {"llm", "tts", "stt", "telephony"}
    # Each key's budget as it stands, where it has one.
    [got_big] = [k for k in keys if k["api_key_id"] == str(big["id"])]
    [got_small] = [k for k in keys if k["api_key_id"] == str(small["id"])]
    assert got_small["budget"] is None
    state = await budgets.status(sb, str(big["id"]))
    assert state is not None
    for name in ("limit_usd", "spent_usd", "reserved_usd", "remaining_usd", "period"):
        assert got_big["budget"][name] == state[name], name
    assert got_big["budget"]["max_concurrent_calls"] == 4

    one = await client.get(
        f"/api/admin/keys/{big['id']}/usage", params={**params, "group_by": "kind"}, headers=ops
    )
    assert one.status_code == 200, one.text
    body = one.json()
    assert {g["key"] for g in body["report"]["groups"]} == {"llm", "tts", "stt", "telephony"}
    assert Decimal(body["report"]["totals"]["cost_usd"]) == sum(e.cost_usd or 0 for e in big_events)
    assert Decimal(body["report"]["totals"]["telephony_seconds"]) == 3 * Decimal(95)
    assert set(body["cost_by_kind"]) == {"llm", "tts", "stt", "telephony"}
    assert body["budget"]["limit_usd"] == state["limit_usd"]
    missing = await client.get(f"/api/admin/keys/{uuid.uuid4()}/usage", headers=ops)
    assert missing.status_code == 404


async def test_a_calls_ledger_rows_for_its_key_and_the_operator_only(
    sb: AsyncClient, client: httpx.AsyncClient
) -> None:
    rnd = random.Random(9)
    key, [thread], events = await seeded_key(
        sb, calls=1, at=datetime.now(UTC) - timedelta(hours=1), rnd=rnd
    )
    _, other_plain = await keys_repo.create_local_key(sb, "not the owner")
    path = f"/api/bot/{thread['workflow_thread_id']}/usage"
    resp = await client.get(path, headers=bearer(key))
    assert resp.status_code == 200, resp.text
    rows = resp.json()["events"]
    assert {r["id"] for r in rows} == {str(e.id) for e in events}
    by_id = {str(e.id): e for e in events}
    for row in rows:
        event = by_id[row["id"]]
        assert row["kind"] == event.kind and row["model"] == event.model
        assert row["input_tokens"] == event.input_tokens
        assert row["characters"] == event.characters
        assert Decimal(row["audio_seconds"]) == event.audio_seconds
        assert Decimal(row["cost_usd"]) == event.cost_usd
        assert isinstance(row["cost_usd"], str) and row["estimated"] is False
        assert "price_source" in row and row["category"] == "bot"
    theirs = await client.get(path, headers=bearer({"plaintext": other_plain}))
    assert theirs.status_code == 404
    ops = await operator(sb)
    as_ops = await client.get(f"/api/admin/calls/{thread['workflow_thread_id']}/usage", headers=ops)
    assert as_ops.json() == resp.json()
    detail = await client.get(f"/api/admin/calls/{thread['workflow_thread_id']}", headers=ops)
    assert detail.status_code == 200 and detail.json()["api_key_id"] == str(key["id"])
    assert (await client.get(path.replace("/usage", ""), headers=ops)).status_code == 401


async def test_a_keys_calls_page_through_all_of_them_with_filters(
    sb: AsyncClient, client: httpx.AsyncClient
) -> None:
    rnd = random.Random(3)
    key, threads, _ = await seeded_key(
        sb, calls=5, at=datetime.now(UTC) - timedelta(hours=2), rnd=rnd
    )
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/api/bot", params=params, headers=bearer(key))).json()
        seen += [c["workflow_thread_id"] for c in page["calls"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(t["workflow_thread_id"] for t in threads)
    assert len(seen) == len(set(seen))
    user0 = await client.get("/api/bot", params={"end_user_id": "user-0"}, headers=bearer(key))
    assert {c["end_user_id"] for c in user0.json()["calls"]} == {"user-0"}
    assert len(user0.json()["calls"]) == 3
    pending = await client.get("/api/bot", params={"status": "completed"}, headers=bearer(key))
    assert pending.json()["calls"] == []
    future = datetime.now(UTC) + timedelta(days=1)
    later = await client.get("/api/bot", params={"start": future.isoformat()}, headers=bearer(key))
    assert later.json()["calls"] == []
    first = (await client.get("/api/bot", headers=bearer(key))).json()["calls"][0]
    assert Decimal(first["cost_usd"]) > 0 and first["duration_seconds"] == 90.0
    assert Decimal(first["telephony_seconds"]) == 95 and first["end_reason"] is None
    bad = await client.get("/api/bot", params={"cursor": "not-a-cursor"}, headers=bearer(key))
    assert bad.status_code == 422
    ops = await operator(sb)
    admin = await client.get("/api/admin/calls", params={"api_key_id": key["id"]}, headers=ops)
    assert {c["workflow_thread_id"] for c in admin.json()["calls"]} == set(seen)
