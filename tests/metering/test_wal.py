"""The write-ahead log: a process killed with events still in memory loses none of them,
a live meter's log is never taken from it, and an estimate logged ahead is superseded
by the event that settles it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from supabase import AsyncClient

from flow import localstack
from flow.metering.events import UsageEvent, UsageKind
from flow.metering.meter import Meter
from flow.metering.spool import replay_spool
from flow.metering.wal import WAL_DIR, WriteAheadLog, dead_logs, read_log
from tests.served import ROOT

CHILD = textwrap.dedent(
    """
    import asyncio, json, sys, uuid
    from pathlib import Path
    from flow.config import get_settings
    from flow.db.client import create_client
    from flow.metering.events import UsageEvent
    from flow.metering.meter import Meter

    async def main() -> None:
        sb = await create_client(get_settings())
        meter = Meter(sb, spool_dir=Path(sys.argv[1]), flush_seconds=3600)
        meter.start()
        for line in sys.stdin:
            if line.strip() == "go":
                break
            meter.add(UsageEvent.model_validate_json(line))
        print("taken", flush=True)
        await asyncio.sleep(3600)  # killed here, the events in memory only

    asyncio.run(main())
    """
)


def events_for(thread: dict[str, Any], n: int) -> list[UsageEvent]:
    return [
        UsageEvent(
            workflow_thread_id=thread["workflow_thread_id"],
            api_key_id=thread["api_key_id"],
            kind=UsageKind.TTS,
            provider="openai",
            model="tts-1",
            characters=20 + i,
            input_cost_usd=Decimal("0.000015") * (20 + i),
            output_cost_usd=Decimal(0),
        )
        for i in range(n)
    ]


async def ledger_ids(sb: AsyncClient, thread: dict[str, Any]) -> list[str]:
    res = await (
        sb.table("usage_events")
        .select("id")
        .eq("workflow_thread_id", thread["workflow_thread_id"])
        .execute()
    )
    return [str(r["id"]) for r in res.data]  # type: ignore[index, union-attr, call-overload]


async def test_events_of_a_killed_process_reach_the_ledger_once(
    stack: localstack.StackInfo, sb: AsyncClient, thread: dict[str, Any], tmp_path: Path
) -> None:
    events = events_for(thread, 5)
    env = {**os.environ, **stack.env(), "PYTHONPATH": str(ROOT)}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(tmp_path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write("".join(e.model_dump_json() + "\n" for e in events).encode())
        child.stdin.write(b"go\n")
        await child.stdin.drain()
        assert (await asyncio.wait_for(child.stdout.readline(), 30)).strip() == b"taken"
        assert dead_logs(tmp_path) == [], "a live meter's log is not taken from it"
        assert await replay_spool(sb, tmp_path) == 0
    finally:
        child.send_signal(signal.SIGKILL)
        await asyncio.wait_for(child.wait(), 10)
    assert await ledger_ids(sb, thread) == []  # nothing reached the ledger before the kill

    assert await replay_spool(sb, tmp_path) == 5
    assert sorted(await ledger_ids(sb, thread)) == sorted(str(e.id) for e in events)
    assert await replay_spool(sb, tmp_path) == 0
    assert list((tmp_path / WAL_DIR).glob("*.jsonl")) == []


async def test_a_closed_meter_leaves_no_log(
    sb: AsyncClient, thread: dict[str, Any], tmp_path: Path
) -> None:
    meter = Meter(sb, spool_dir=tmp_path)
    for event in events_for(thread, 3):
        meter.add(event)
    assert len(list((tmp_path / WAL_DIR).glob("*.jsonl"))) == 1
    await meter.close()
    assert meter.recorded == 3
    assert list((tmp_path / WAL_DIR).glob("*.jsonl")) == []


def test_an_estimate_logged_ahead_counts_only_until_its_event_arrives(tmp_path: Path) -> None:
    common: dict[str, Any] = {
        "workflow_thread_id": uuid.uuid4(),
        "api_key_id": uuid.uuid4(),
        "kind": UsageKind.LLM,
        "provider": "openai",
        "model": "gpt-4o-mini",
    }
    settled_id, cut_id = uuid.uuid4(), uuid.uuid4()
    log = WriteAheadLog(tmp_path)
    log.append(
        UsageEvent(id=settled_id, input_tokens=90, estimated=True, **common), provisional=True
    )
    log.append(UsageEvent(id=cut_id, input_tokens=120, estimated=True, **common), provisional=True)
    log.append(UsageEvent(id=settled_id, input_tokens=92, output_tokens=14, **common))
    with open(log.path, "a") as fh:
        fh.write('{"event": {"torn')  # a line cut short
    events = {e.id: e for e in read_log(log.path)}
    assert set(events) == {settled_id, cut_id}
    assert (events[settled_id].output_tokens, events[settled_id].estimated) == (14, False)
    assert (events[cut_id].input_tokens, events[cut_id].estimated) == (120, True)
    lines = [json.loads(x) for x in log.path.read_text().splitlines()[:3]]
    assert [next(iter(x)) for x in lines] == ["provisional", "provisional", "event"]
    log.discard()
    assert not log.path.exists()
