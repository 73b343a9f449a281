"""Instances and the calls they hold: a call whose instance stopped beating, or that its
own instance no longer holds, is failed (``instance_lost``) at the next beat of any
live instance; a live instance's calls are left alone. A call ended so (or settled late
as ``database_unavailable``) sends its signed ``call.failed`` webhook once, however
many instances notice."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from supabase import AsyncClient

from flow.bot.instance import InstanceJobs
from flow.bot.thread_writes import ThreadWrites
from flow.config import Settings
from flow.db import instances
from flow.db import threads as threads_repo
from flow.workflows.webhook import (
    SIGNATURE_HEADER,
    WEBHOOK_LEASE_SECONDS,
    WEBHOOK_SETTLE_SECONDS,
    CallWebhooks,
    WebhookSender,
    verify_signature,
)
from tests.fakes.recording_sink import RecordingSink

SECRET = "whsec-instances"


def jobs(
    sb: AsyncClient, tmp_path: Path, held: list[str], instance_id: str, **options: Any
) -> InstanceJobs:
    async def stop(_tid: str) -> bool:
        return False

    return InstanceJobs(
        sb,
        spool_dir=tmp_path,
        max_call_seconds=60,
        running_calls=lambda: list(held),
        stop_call=stop,
        stale_seconds=5,
        instance_id=instance_id,
        **options,
    )


@pytest.fixture
async def receiver() -> AsyncIterator[RecordingSink]:
    sink = await RecordingSink().start()
    yield sink
    await sink.stop()


def call_webhooks(settings: Settings, sb: AsyncClient) -> CallWebhooks:
    hooks = settings.model_copy(
        update={"flow_webhook_secret": SecretStr(SECRET), "flow_allow_private_urls": True}
    )
    return CallWebhooks(sb, WebhookSender(hooks, backoff_seconds=0.05))


def failed_events(receiver: RecordingSink) -> list[dict[str, Any]]:
    """The events received, each checked for its signature."""
    events = []
    for request in receiver.requests:
        assert verify_signature(SECRET, request["headers"][SIGNATURE_HEADER], request["body"])
        events.append(json.loads(request["body"]))
    return events


async def running_thread(
    sb: AsyncClient, api_key: dict[str, Any], instance_id: str, **fields: Any
) -> str:
    row = await threads_repo.create_thread(
        sb,
        api_key_id=api_key["id"],
        transport="simulated",
        script=["hi"],
        status="running",
        instance_id=instance_id,
        **fields,
    )
    return str(row["workflow_thread_id"])


async def status_of(sb: AsyncClient, tid: str) -> tuple[str, str | None]:
    row = await threads_repo.get_thread(sb, tid)
    assert row is not None
    return row["status"], row["error_code"]


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_calls_of_an_instance_that_stopped_beating_are_failed_at_the_next_beat(
    sb: AsyncClient, api_key: dict[str, Any], tmp_path: Path
) -> None:
    me, alive, dead = name("me"), name("alive"), name("dead")
    await instances.heartbeat(sb, alive, "host-b", 2)
    orphan = await running_thread(sb, api_key, dead)  # its instance never beat again
    kept = await running_thread(sb, api_key, alive)

    assert orphan in await jobs(sb, tmp_path, [], me).beat()
    assert await status_of(sb, orphan) == ("failed", "instance_lost")
    assert await status_of(sb, kept) == ("running", None)


async def test_a_call_its_own_instance_no_longer_holds_is_failed(
    sb: AsyncClient, api_key: dict[str, Any], tmp_path: Path
) -> None:
    """The call ended here but its end could not be written (a database blip)."""
    me = name("me")
    long_ago = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    dropped = await running_thread(sb, api_key, me, updated_at=long_ago)
    held = await running_thread(sb, api_key, me, updated_at=long_ago)
    just_taken = await running_thread(sb, api_key, me)  # not yet in the held list

    lost = await jobs(sb, tmp_path, [held], me).beat()
    assert dropped in lost and held not in lost and just_taken not in lost
    assert await status_of(sb, dropped) == ("failed", "instance_lost")
    assert await status_of(sb, held) == ("running", None)
    assert await status_of(sb, just_taken) == ("running", None)


async def test_an_instance_that_stops_leaves_the_table(sb: AsyncClient, tmp_path: Path) -> None:
    me = name("me")
    instance = jobs(sb, tmp_path, [], me)
    instance.start()
    await instance.beat()
    res = await sb.table("flow_instances").select("id").eq("id", me).execute()
    assert res.data == [{"id": me}]
    await instance.stop()
    res = await sb.table("flow_instances").select("id").eq("id", me).execute()
    assert res.data == []


async def test_a_lost_call_sends_one_call_failed_webhook_however_many_instances_notice(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    tmp_path: Path,
    receiver: RecordingSink,
) -> None:
    webhook_url = f"{receiver.url}/hooks"
    orphan = await running_thread(sb, api_key, name("dead"), webhook_url=webhook_url)
    senders = [call_webhooks(settings, sb) for _ in range(3)]
    live = [
        jobs(sb, tmp_path, [], name("live"), calls_ended=hooks.send_soon) for hooks in senders[:2]
    ]

    lost = await asyncio.gather(*(instance.beat() for instance in live))
    assert sum(orphan in ids for ids in lost) == 1  # the update hands it to one instance
    assert orphan not in await live[0].beat()  # a later beat does not take it again
    # Another sender holding the finished row (the call's own instance, back from a
    # network partition) finds the event claimed.
    row = await threads_repo.get_thread(sb, orphan)
    assert row is not None and await senders[2].send(row) is False
    for hooks in senders:
        await hooks.drain(10)

    [event] = failed_events(receiver)
    assert event["type"] == "call.failed"
    assert event["data"]["workflow_thread_id"] == orphan
    assert event["data"]["error"]["code"] == "instance_lost"


async def test_a_call_whose_end_is_settled_late_sends_its_call_failed_webhook(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    tmp_path: Path,
    receiver: RecordingSink,
) -> None:
    """The call ended here during a database blip: its end is written at the next beat."""
    me = name("me")
    tid = await running_thread(sb, api_key, me, webhook_url=f"{receiver.url}/hooks")
    writes = ThreadWrites(sb)
    ended_at = datetime.now(UTC).isoformat()
    writes.unsettled[tid] = {"transcript": [], "bot_ended_at": ended_at, "end_reason": "idle"}
    hooks = call_webhooks(settings, sb)
    instance = jobs(
        sb,
        tmp_path,
        [],
        me,
        held_calls=lambda: list(writes.unsettled),
        settle_calls=writes.settle,
        calls_ended=hooks.send_soon,
    )

    await instance.beat()
    await instance.beat()
    await hooks.drain(10)

    [event] = failed_events(receiver)
    assert event["type"] == "call.failed"
    assert event["data"]["error"]["code"] == "database_unavailable"
    assert event["data"]["end_reason"] == "idle"


async def test_an_abandoned_call_sends_its_call_failed_webhook(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    tmp_path: Path,
    receiver: RecordingSink,
) -> None:
    long_ago = (datetime.now(UTC) - timedelta(hours=3)).isoformat()
    row = await threads_repo.create_thread(
        sb,
        api_key_id=api_key["id"],
        transport="simulated",
        script=["hi"],
        created_at=long_ago,
        webhook_url=f"{receiver.url}/hooks",
    )
    tid = str(row["workflow_thread_id"])
    hooks = call_webhooks(settings, sb)
    instance = jobs(sb, tmp_path, [], name("me"), calls_ended=hooks.send_soon)

    assert tid in await instance.fail_abandoned()
    await hooks.drain(10)
    assert [e["data"]["workflow_thread_id"] for e in failed_events(receiver)] == [tid]


# Every due webhook of the test database: the sweeps here must find their own calls
# whatever other tests left behind.
ALL = 100_000


async def finished_thread(
    sb: AsyncClient, api_key: dict[str, Any], webhook_url: str, finished_ago: timedelta
) -> str:
    at = (datetime.now(UTC) - finished_ago).isoformat()
    row = await threads_repo.create_thread(
        sb,
        api_key_id=api_key["id"],
        transport="simulated",
        script=["hi"],
        status="failed",
        error_code="instance_lost",
        webhook_url=webhook_url,
        updated_at=at,
    )
    return str(row["workflow_thread_id"])


async def sent_at(sb: AsyncClient, tid: str) -> Any:
    res = (
        await sb.table("workflow_threads")
        .select("webhook_sent_at")
        .eq("workflow_thread_id", tid)
        .execute()
    )
    return res.data[0]["webhook_sent_at"]


async def first_sending_answered(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    receiver: RecordingSink,
    status: int,
) -> tuple[str, str, CallWebhooks]:
    """A finished call whose webhook's first sending the receiver answered ``status``
    (every retry): its receiver path, its id and its sender."""
    path = f"/answers-{status}-{uuid.uuid4().hex[:8]}"
    receiver.answer(path, status)
    tid = await finished_thread(sb, api_key, receiver.url + path, timedelta(0))
    hooks = call_webhooks(settings, sb)
    row = await threads_repo.get_thread(sb, tid)
    assert row is not None and await hooks.send(row) is False
    return path, tid, hooks


async def claim_lease_expired(sb: AsyncClient, tid: str) -> None:
    long_ago = datetime.now(UTC) - timedelta(seconds=WEBHOOK_LEASE_SECONDS + 60)
    await threads_repo.update_thread(sb, tid, webhook_claimed_at=long_ago.isoformat())


async def test_a_webhook_the_receiver_never_took_is_sent_again_with_its_event_id(
    settings: Settings, sb: AsyncClient, api_key: dict[str, Any], receiver: RecordingSink
) -> None:
    path, tid, hooks = await first_sending_answered(settings, sb, api_key, receiver, 503)
    assert tid not in await hooks.sweep(ALL)  # its claim holds for the lease
    assert await sent_at(sb, tid) is None

    await claim_lease_expired(sb, tid)
    receiver.answer(path, 200)
    assert tid in await hooks.sweep(ALL)
    await hooks.drain(10)
    assert await sent_at(sb, tid) is not None
    assert tid not in await hooks.sweep(ALL)  # delivered: never again

    ids = {json.loads(r["body"])["id"] for r in receiver.requests if r["path"] == path}
    assert len(ids) == 1  # every delivery of the call's event has the same id
    assert len([r for r in receiver.requests if r["path"] == path]) > 1


async def test_a_finished_call_nobody_claimed_is_swept_once_it_settled(
    settings: Settings, sb: AsyncClient, api_key: dict[str, Any], receiver: RecordingSink
) -> None:
    """Its own instance could not claim it (the database was away): any instance's
    housekeeping sends it, once, a little after the call finished."""
    path = f"/late-{uuid.uuid4().hex[:8]}"
    just_now = await finished_thread(sb, api_key, receiver.url + path, timedelta(0))
    settled = await finished_thread(
        sb, api_key, receiver.url + path, timedelta(seconds=WEBHOOK_SETTLE_SECONDS + 30)
    )
    sweepers = [call_webhooks(settings, sb) for _ in range(2)]
    swept = await asyncio.gather(*(hooks.sweep(ALL) for hooks in sweepers))
    assert sum(settled in ids for ids in swept) == 1
    assert not any(just_now in ids for ids in swept)
    for hooks in sweepers:
        await hooks.drain(10)
    [event] = [json.loads(r["body"]) for r in receiver.requests if r["path"] == path]
    assert event["data"]["workflow_thread_id"] == settled
    await threads_repo.webhook_sent(sb, just_now)  # no later sweep sends it anywhere


async def test_a_webhook_refused_for_good_is_not_sent_again(
    settings: Settings, sb: AsyncClient, api_key: dict[str, Any], receiver: RecordingSink
) -> None:
    path, tid, hooks = await first_sending_answered(settings, sb, api_key, receiver, 410)
    assert await sent_at(sb, tid) is not None  # done: a 410 is not retried later
    await claim_lease_expired(sb, tid)
    assert tid not in await hooks.sweep(ALL)
    assert len([r for r in receiver.requests if r["path"] == path]) == 1
