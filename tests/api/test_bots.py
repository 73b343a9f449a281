"""POST /api/bot/join, GET /api/bot/{id}, POST /api/bot/{id}/stop over HTTP, against the
real database, with a runner that records what it is handed."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
from pydantic import SecretStr
from supabase import AsyncClient

from flow.config import Settings
from flow.db import call_state, instances
from flow.db import keys as keys_repo
from flow.db import threads as threads_repo
from flow.db.call_state import CallStatus
from flow.db.client import call, rows_of
from flow.db.usage import record_usage_events
from flow.metering.events import UsageEvent
from flow.workflows.webhook import SIGNATURE_HEADER, verify_signature
from tests.api.conftest import serve
from tests.api.recording_runner import RecordingRunner
from tests.fakes.recording_sink import RecordingSink

DAILY_JOIN = {
    "room_url": "https://example.daily.co/standup",
    "token": "daily-meeting-token-secret-123",
    "bot_config": {"system_prompt": "Be brief.", "llm_model": "gpt-4o-mini"},
    "end_user_id": "user-42",
    "metadata": {"plan": "pro", "seats": 3},
    "analysis_prompt": "List action items.",
    "webhook_url": "https://hooks.example.com/flow",
}


async def _threads_of(sb: AsyncClient, api_key_id: str) -> list[dict[str, Any]]:
    res = await call(sb.table("workflow_threads").select("*").eq("api_key_id", api_key_id).execute)
    return rows_of(res)


async def test_join_creates_a_thread_owned_by_the_key_and_submits_the_call(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    api_key: dict[str, Any],
    runner: RecordingRunner,
    sb: AsyncClient,
) -> None:
    res = await client.post("/api/bot/join", json=DAILY_JOIN, headers=auth)
    assert res.status_code == 202, res.text
    body = res.json()
    assert body["status"] == "pending"
    thread_id = body["workflow_thread_id"]

    row = await threads_repo.get_thread(sb, thread_id)
    assert row is not None
    assert row["api_key_id"] == api_key["id"]
    assert row["status"] == "pending"
    assert row["transport"] == "daily"
    assert row["room_url"] == "https://example.daily.co/standup"
    assert row["end_user_id"] == "user-42"
    assert row["metadata"] == {"plan": "pro", "seats": 3}
    assert row["bot_config"] == {
        "mode": "pipeline",  # the default, stored as the mode the call runs in
        "system_prompt": "Be brief.",
        "llm_model": "gpt-4o-mini",
    }
    assert row["webhook_url"] == "https://hooks.example.com/flow"
    # The meeting token goes to the runner, never to the database.
    assert "daily-meeting-token-secret-123" not in json.dumps(row, default=str)

    [submitted] = runner.submitted
    assert submitted.workflow_thread_id == thread_id
    assert submitted.api_key_id == api_key["id"]
    assert submitted.transport == "daily"
    assert submitted.token == "daily-meeting-token-secret-123"
    assert submitted.room_url == "https://example.daily.co/standup"
    assert submitted.bot_config.system_prompt == "Be brief."
    assert submitted.end_user_id == "user-42"
    assert submitted.process_insights is True
    assert submitted.analysis_prompt == "List action items."
    assert submitted.webhook_url == "https://hooks.example.com/flow"
    assert submitted.metadata == {"plan": "pro", "seats": 3}


async def test_join_takes_the_end_user_from_the_x_flow_user_header(
    client: httpx.AsyncClient, auth: dict[str, str], runner: RecordingRunner, sb: AsyncClient
) -> None:
    res = await client.post(
        "/api/bot/join",
        json={"transport": "simulated", "script": ["hi", "bye"], "process_insights": False},
        headers={**auth, "X-Flow-User": "header-user"},
    )
    assert res.status_code == 202, res.text
    row = await threads_repo.get_thread(sb, res.json()["workflow_thread_id"])
    assert row is not None
    assert row["end_user_id"] == "header-user"
    assert row["script"] == ["hi", "bye"]
    assert row["process_insights"] is False
    assert runner.submitted[0].end_user_id == "header-user"
    assert runner.submitted[0].script == ["hi", "bye"]


async def test_another_key_can_neither_see_nor_stop_the_thread(
    client: httpx.AsyncClient, auth: dict[str, str], runner: RecordingRunner, sb: AsyncClient
) -> None:
    res = await client.post("/api/bot/join", json=DAILY_JOIN, headers=auth)
    thread_id = res.json()["workflow_thread_id"]
    _, other_plaintext = await keys_repo.create_local_key(sb, "other tenant")
    other = {"Authorization": f"Bearer {other_plaintext}"}

    seen = await client.get(f"/api/bot/{thread_id}", headers=other)
    assert seen.status_code == 404
    assert seen.json()["error"] == "thread_not_found"
    stopped = await client.post(f"/api/bot/{thread_id}/stop", headers=other)
    assert stopped.status_code == 404
    assert runner.stopped == []
    assert thread_id in runner.running

    # The owner still sees and stops it.
    assert (await client.get(f"/api/bot/{thread_id}", headers=auth)).status_code == 200
    own_stop = await client.post(f"/api/bot/{thread_id}/stop", headers=auth)
    assert own_stop.status_code == 202
    assert own_stop.json() == {"workflow_thread_id": thread_id, "status": "stopping"}
    assert runner.stopped == [thread_id]


async def test_thread_status_shows_usage_with_exact_money_transcript_and_error(
    client: httpx.AsyncClient, auth: dict[str, str], api_key: dict[str, Any], sb: AsyncClient
) -> None:
    res = await client.post(
        "/api/bot/join", json={"transport": "simulated", "script": ["hi"]}, headers=auth
    )
    thread_id = res.json()["workflow_thread_id"]
    costs = [Decimal("0.0000123457"), Decimal("0.1000000001"), Decimal("0.0000000002")]
    events = [
        UsageEvent(
            workflow_thread_id=thread_id,
            api_key_id=api_key["id"],
            occurred_at=datetime.now(UTC),
            kind="llm",
            provider="openai",
            model="gpt-4o-mini",
            input_tokens=100 + i,
            output_tokens=10,
            cost_usd=cost,
        )
        for i, cost in enumerate(costs)
    ]
    await record_usage_events(sb, events)
    transcript = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    await threads_repo.update_thread(sb, thread_id, transcript=transcript)
    await call_state.fail(sb, thread_id, stage="bot", code="llm_error", message="boom")

    got = await client.get(f"/api/bot/{thread_id}", headers=auth)
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["status"] == "failed"
    assert body["error"] == {"stage": "bot", "code": "llm_error", "message": "boom"}
    assert body["transcript"] == transcript
    stats = body["usage_stats"]
    assert isinstance(stats["total_cost_usd"], str)
    assert Decimal(stats["total_cost_usd"]) == sum(costs)
    assert stats["llm_calls"] == 3
    assert stats["input_tokens"] == 303
    assert body["created_at"] and body["updated_at"]

    # A finished call cannot be stopped.
    stop = await client.post(f"/api/bot/{thread_id}/stop", headers=auth)
    assert stop.status_code == 409
    assert stop.json()["error"] == "already_finished"


async def test_stopping_a_call_no_bot_runs_is_409(
    client: httpx.AsyncClient, auth: dict[str, str], api_key: dict[str, Any], sb: AsyncClient
) -> None:
    row = await threads_repo.create_thread(
        sb, api_key_id=api_key["id"], transport="simulated", script=["x"]
    )
    res = await client.post(f"/api/bot/{row['workflow_thread_id']}/stop", headers=auth)
    assert res.status_code == 409
    assert res.json()["error"] == "not_running"


async def test_unknown_and_malformed_thread_ids_are_clear_4xx(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    missing = await client.get(f"/api/bot/{uuid.uuid4()}", headers=auth)
    assert missing.status_code == 404
    assert missing.json()["error"] == "thread_not_found"
    malformed = await client.get("/api/bot/not-a-uuid", headers=auth)
    assert malformed.status_code == 422
    body = malformed.json()
    assert body["error"] == "validation_error"
    assert body["details"][0]["loc"] == ["path", "workflow_thread_id"]


async def test_a_full_runner_answers_503_with_retry_after_before_creating_a_thread(
    local_settings: Settings, auth: dict[str, str], api_key: dict[str, Any], sb: AsyncClient
) -> None:
    full = RecordingRunner(capacity=0)
    async with serve(local_settings, full) as client:
        res = await client.post("/api/bot/join", json=DAILY_JOIN, headers=auth)
    assert res.status_code == 503
    assert res.json()["error"] == "at_capacity"
    assert int(res.headers["Retry-After"]) > 0
    assert await _threads_of(sb, api_key["id"]) == []
    assert full.submitted == []


async def test_a_runner_filling_up_during_join_marks_the_thread_failed(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    api_key: dict[str, Any],
    runner: RecordingRunner,
    sb: AsyncClient,
) -> None:
    runner.refuse_next_submit = 9
    res = await client.post("/api/bot/join", json=DAILY_JOIN, headers=auth)
    assert res.status_code == 503
    assert res.headers["Retry-After"] == "9"
    [row] = await _threads_of(sb, api_key["id"])
    assert row["status"] == "failed"
    assert (row["error_stage"], row["error_code"]) == ("join", "at_capacity")


async def test_simulated_transport_is_refused_in_production(
    local_settings: Settings, auth: dict[str, str], api_key: dict[str, Any], sb: AsyncClient
) -> None:
    production = local_settings.model_copy(update={"flow_env": "production"})
    async with serve(production, RecordingRunner()) as client:
        res = await client.post(
            "/api/bot/join", json={"transport": "simulated", "script": ["hi"]}, headers=auth
        )
    assert res.status_code == 400
    assert res.json()["error"] == "transport_not_allowed"
    assert await _threads_of(sb, api_key["id"]) == []


async def test_join_limits_and_bad_bodies_are_clear_4xx(
    local_settings: Settings, auth: dict[str, str], api_key: dict[str, Any], sb: AsyncClient
) -> None:
    tight = local_settings.model_copy(
        update={
            "flow_max_script_turns": 2,
            "flow_max_prompt_chars": 20,
            "flow_max_body_bytes": 8192,
        }
    )
    cases: list[tuple[Any, int, str]] = [
        ({"transport": "simulated", "script": ["a", "b", "c"]}, 422, "limit_exceeded"),
        ({**DAILY_JOIN, "bot_config": {"system_prompt": "x" * 21}}, 422, "limit_exceeded"),
        ({**DAILY_JOIN, "analysis_prompt": "x" * 21}, 422, "limit_exceeded"),
        ({**DAILY_JOIN, "room_url": "http://example.daily.co/room"}, 422, "validation_error"),
        ({**DAILY_JOIN, "room_url": "not a url"}, 422, "validation_error"),
        ({"token": "abc"}, 422, "validation_error"),
        ({"transport": "simulated", "script": []}, 422, "validation_error"),
        ({**DAILY_JOIN, "bot_config": {"temperature": 2}}, 422, "validation_error"),
        ({**DAILY_JOIN, "metadata": {"blob": "x" * 4100}}, 422, "validation_error"),
        ({**DAILY_JOIN, "metadata": ["not", "an", "object"]}, 422, "validation_error"),
        ({**DAILY_JOIN, "end_user_id": "u" * 256}, 422, "validation_error"),
        ({**DAILY_JOIN, "surprise": True}, 422, "validation_error"),
        ({**DAILY_JOIN, "metadata": {"pad": "x" * 9000}}, 413, "payload_too_large"),
    ]
    async with serve(tight, RecordingRunner()) as client:
        for body, status, code in cases:
            res = await client.post("/api/bot/join", json=body, headers=auth)
            assert res.status_code == status, (body, res.text)
            assert res.json()["error"] == code, (body, res.text)
            assert res.json()["message"]
        # Not JSON at all.
        res = await client.post(
            "/api/bot/join",
            content=b"{not json",
            headers={**auth, "Content-Type": "application/json"},
        )
        assert res.status_code == 422
        assert res.json()["error"] == "validation_error"

        # A body streamed without Content-Length is cut off at the limit too.
        async def chunks() -> Any:
            for _ in range(10):
                yield b" " * 1024

        res = await client.post(
            "/api/bot/join",
            content=chunks(),
            headers={**auth, "Content-Type": "application/json"},
        )
        assert res.status_code == 413
        assert res.json()["error"] == "payload_too_large"
    assert await _threads_of(sb, api_key["id"]) == []


async def test_unknown_routes_answer_json_errors(client: httpx.AsyncClient) -> None:
    res = await client.get("/api/nothing-here")
    assert res.status_code == 404
    assert res.json()["error"] == "not_found"
    res = await client.delete("/health")
    assert res.status_code == 405
    assert res.json()["error"] == "method_not_allowed"


async def test_stopping_a_call_another_instance_runs_records_the_request(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    api_key: dict[str, Any],
    sb: AsyncClient,
    runner: RecordingRunner,
) -> None:
    row = await threads_repo.create_thread(
        sb, api_key_id=api_key["id"], transport="simulated", script=["x"]
    )
    thread_id = str(row["workflow_thread_id"])
    other = f"other-instance-{uuid.uuid4().hex[:6]}"
    await instances.heartbeat(sb, other, "elsewhere", 1)
    assert await call_state.move(sb, thread_id, CallStatus.STARTING, instance_id=other)
    assert await call_state.move(sb, thread_id, CallStatus.RUNNING)
    res = await client.post(f"/api/bot/{thread_id}/stop", headers=auth)
    assert res.status_code == 202, res.text
    assert res.json() == {"workflow_thread_id": thread_id, "status": "stopping"}
    assert runner.stopped == []  # not this instance's call...
    assert await threads_repo.stop_requested(sb, [thread_id]) == [thread_id]  # ...recorded


async def test_stopping_a_call_no_live_instance_runs_ends_it_at_once_with_one_webhook(
    local_settings: Settings, auth: dict[str, str], api_key: dict[str, Any], sb: AsyncClient
) -> None:
    receiver = await RecordingSink().start()
    row = await threads_repo.create_thread(
        sb,
        api_key_id=api_key["id"],
        transport="simulated",
        script=["x"],
        webhook_url=f"{receiver.url}/hooks",
    )
    thread_id = str(row["workflow_thread_id"])
    gone = f"gone-instance-{uuid.uuid4().hex[:6]}"  # never beat: killed at once
    assert await call_state.move(sb, thread_id, CallStatus.STARTING, instance_id=gone)
    assert await call_state.move(sb, thread_id, CallStatus.RUNNING)
    local = local_settings.model_copy(update={"flow_allow_private_urls": True})
    try:
        async with serve(local, RecordingRunner()) as client:  # its end drains deliveries
            res = await client.post(f"/api/bot/{thread_id}/stop", headers=auth)
            assert res.status_code == 202, res.text
            assert res.json() == {"workflow_thread_id": thread_id, "status": "failed"}
            again = await client.post(f"/api/bot/{thread_id}/stop", headers=auth)
            assert again.status_code == 409
    finally:
        await receiver.stop()
    got = await threads_repo.get_thread(sb, thread_id)
    assert got is not None
    assert (got["status"], got["error_code"]) == ("failed", "instance_lost")
    [delivery] = receiver.requests
    secret = local.flow_webhook_secret.get_secret_value()
    assert verify_signature(secret, delivery["headers"][SIGNATURE_HEADER], delivery["body"])
    payload = json.loads(delivery["body"])
    assert payload["type"] == "call.failed"
    assert payload["data"]["workflow_thread_id"] == thread_id
    assert payload["data"]["error"]["code"] == "instance_lost"


async def test_join_is_refused_when_bots_cannot_run_here(
    local_settings: Settings, auth: dict[str, str], runner: RecordingRunner
) -> None:
    unconfigured = local_settings.model_copy(update={"openai_api_key": SecretStr("")})
    async with serve(unconfigured, runner) as client:
        res = await client.post(
            "/api/bot/join", json={"transport": "simulated", "script": ["hi"]}, headers=auth
        )
    assert res.status_code == 503
    assert res.json()["error"] == "bot_not_configured"
    assert "OPENAI_API_KEY" in res.json()["message"]
    assert runner.submitted == []
