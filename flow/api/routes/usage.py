"""Usage reports for the calling key, computed in SQL by ``usage_report`` (one RPC).

Totals over ``[start, end)`` (default: the last 30 days) and, with ``group_by``, one
group per day (UTC), model, category, kind or end user. Decimal figures (cost, audio
seconds, averages, error rate) are strings so no digit is lost on the way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel
from supabase import AsyncClient

from flow.api.deps import ApiKeyDep, SupabaseDep
from flow.api.errors import ERROR_RESPONSES
from flow.api.ranges import report_range
from flow.db import usage as usage_repo

router = APIRouter(prefix="/api/usage", tags=["usage"], responses=ERROR_RESPONSES)

GroupBy = Literal["day", "model", "category", "kind", "end_user"]


class UsageFigures(BaseModel):
    """Figures for a period (or a group within it).

    Parameters:
        calls: distinct calls with usage. end_users: distinct end users.
        events: ledger rows. llm_calls: LLM inferences.
        input_tokens: prompt tokens, cached and audio included; ``cached_tokens`` is
            the cached part.
        input_audio_tokens / output_audio_tokens: the audio parts of ``input_tokens``
            / ``output_tokens`` (text is the rest); cache_read_audio_tokens: the cached
            audio, part of both ``cached_tokens`` and ``input_audio_tokens``.
        telephony_seconds: phone call legs' durations (each billed per started minute).
        cost_usd: priced cost; ``unpriced_events`` were recorded without a price.
        avg_cost_per_call_usd / avg_cost_per_end_user_usd: null when there is no call /
            no named end user (the latter averages the cost of events naming one).
        avg_llm_latency_ms: over LLM events that report a latency.
        error_rate: error events / events, null without events.
    """

    calls: int
    end_users: int
    events: int
    llm_calls: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    input_audio_tokens: int
    output_audio_tokens: int
    cache_read_audio_tokens: int
    tts_characters: int
    stt_seconds: str
    telephony_seconds: str = "0"
    cost_usd: str
    unpriced_events: int
    avg_cost_per_call_usd: str | None
    avg_cost_per_end_user_usd: str | None
    avg_llm_latency_ms: str | None
    error_events: int
    error_rate: str | None


class UsageGroup(UsageFigures):
    key: str | None


class UsageReport(BaseModel):
    api_key_id: str
    start: datetime
    end: datetime
    group_by: GroupBy | None
    totals: UsageFigures
    groups: list[UsageGroup]


@dataclass(frozen=True)
class ReportQuery:
    """A report's period (checked, in UTC) and grouping, from its query."""

    start: datetime
    end: datetime
    group_by: GroupBy | None

    async def read(self, sb: AsyncClient, api_key_id: str) -> UsageReport:
        """The key's report over the period (one RPC)."""
        data = await usage_repo.usage_report(sb, api_key_id, self.start, self.end, self.group_by)
        return UsageReport(
            api_key_id=api_key_id,
            start=self.start,
            end=self.end,
            group_by=self.group_by,
            totals=UsageFigures(**data["totals"]),
            groups=[UsageGroup(**g) for g in data["groups"]],
        )


def report_query(
    start: datetime | None = None, end: datetime | None = None, group_by: GroupBy | None = None
) -> ReportQuery:
    return ReportQuery(*report_range(start, end), group_by)


ReportQueryDep = Annotated[ReportQuery, Depends(report_query)]


@router.get("", response_model=UsageReport)
async def usage_report(api_key: ApiKeyDep, sb: SupabaseDep, query: ReportQueryDep) -> UsageReport:
    """Usage and cost of the calling key. Times without a zone are UTC."""
    return await query.read(sb, api_key.id)
