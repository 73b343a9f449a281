"""The price's source travels with the event: through the write-ahead log and the spool
into the ledger; spool files written before it existed still replay; the ledger refuses
a source without a price."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from supabase import AsyncClient

from flow.db.client import DatabaseError, call, rows_of
from flow.db.usage import record_usage_events
from flow.metering.events import UsageEvent
from flow.metering.spool import SPOOL_FILE, append_to_spool, replay_spool
from flow.metering.wal import WriteAheadLog, read_log
from tests.integration.test_ledger import tts_event


async def ledger_rows(sb: AsyncClient, events: list[UsageEvent]) -> dict[str, dict[str, Any]]:
    res = await call(
        sb.table("usage_events")
        .select("id,price_source,cost_usd::text")
        .in_("id", [str(e.id) for e in events])
        .execute
    )
    return {row["id"]: row for row in rows_of(res)}


def test_the_write_ahead_log_keeps_the_source(tmp_path: Path) -> None:
    thread = {"workflow_thread_id": "8c3a0f9e-0000-4000-8000-000000000001"}
    event = tts_event({**thread, "api_key_id": "8c3a0f9e-0000-4000-8000-000000000002"}, 30)
    wal = WriteAheadLog(tmp_path)
    wal.append(event)
    [read] = read_log(wal.path)
    assert read.price_source == event.price_source and read.price_source is not None
    wal.discard()


async def test_the_spool_carries_the_source_into_the_ledger(
    sb: AsyncClient, thread: dict[str, Any], tmp_path: Path
) -> None:
    events = [tts_event(thread, 40), tts_event(thread, 41)]
    append_to_spool(tmp_path, events)
    assert await replay_spool(sb, tmp_path) == 2
    rows = await ledger_rows(sb, events)
    for event in events:
        row = rows[str(event.id)]
        assert row["price_source"] == event.price_source
        assert (
            row["price_source"].startswith("voice-table ") and "openai/tts-1" in row["price_source"]
        )


def write_as_before_sources(path: Path, events: list[UsageEvent]) -> None:
    """Spool lines as an older Flow wrote them: neither the source nor the cost split,
    only the total."""
    lines = []
    for event in events:
        row = event.to_row()
        for name in ("price_source", "input_cost_usd", "output_cost_usd"):
            del row[name]
        lines.append(json.dumps(row) + "\n")
    path.write_text("".join(lines))


async def test_a_spool_file_written_before_sources_existed_still_replays(
    sb: AsyncClient, thread: dict[str, Any], tmp_path: Path
) -> None:
    old = [tts_event(thread, 50), tts_event(thread, 51)]
    write_as_before_sources(tmp_path / SPOOL_FILE, old)
    assert await replay_spool(sb, tmp_path) == 2
    rows = await ledger_rows(sb, old)
    for event in old:
        row = rows[str(event.id)]
        assert row["price_source"] is None
        assert Decimal(row["cost_usd"]) == event.cost_usd


class RawRow:
    def __init__(self, row: dict[str, Any]) -> None:
        self.row = row

    def to_row(self) -> dict[str, Any]:
        return self.row


async def test_the_ledger_refuses_a_source_without_a_price(
    sb: AsyncClient, thread: dict[str, Any]
) -> None:
    row = tts_event(thread, 60).to_row()
    row.update(cost_usd=None, input_cost_usd=None, output_cost_usd=None)
    with pytest.raises(DatabaseError, match="price_source"):
        await record_usage_events(sb, [RawRow(row)])
