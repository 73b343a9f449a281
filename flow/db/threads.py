"""``workflow_threads``: one row per call, owned by an API key.

Statuses and their moves belong to :mod:`flow.db.call_state` (the only writer of
``status``). Updates here name their columns and never touch ``status``;
``usage_stats`` is written only by ``record_usage_events`` in SQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from supabase import AsyncClient

from flow.db.call_state import FINISHED
from flow.db.client import call, first_of, loads_exact, rows_of, update_call_row

THREAD_COLUMNS = (
    "workflow_thread_id,api_key_id,status,error_stage,error_code,error_message,transport,"
    "room_url,bot_config,script,end_user_id,process_insights,analysis_prompt,webhook_url,"
    "metadata,transcript,insights,posthog_trace_id,bot_started_at,bot_ended_at,end_reason,"
    "created_at,updated_at,usage_stats_json:usage_stats::text"
)


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    row["usage_stats"] = loads_exact(row.pop("usage_stats_json", None)) or {}
    return row


def thread_row(*, api_key_id: UUID | str, **fields: Any) -> dict[str, Any]:
    """The columns of a new pending thread; its PostHog trace id is the thread id."""
    thread_id = str(fields.pop("workflow_thread_id", None) or uuid4())
    return {
        "workflow_thread_id": thread_id,
        "api_key_id": str(api_key_id),
        "posthog_trace_id": thread_id,
        "usage_stats": {"posthog_trace_id": thread_id},
        **fields,
    }


async def create_thread(
    sb: AsyncClient, *, api_key_id: UUID | str, **fields: Any
) -> dict[str, Any]:
    """Insert a pending thread (see :func:`thread_row`)."""
    row = thread_row(api_key_id=api_key_id, **fields)
    res = await call(lambda: sb.table("workflow_threads").insert(row).execute())
    return rows_of(res)[0]


async def get_thread(
    sb: AsyncClient, thread_id: UUID | str, api_key_id: UUID | str | None = None
) -> dict[str, Any] | None:
    """The thread, or None; with ``api_key_id`` another key's thread is None too."""
    try:
        UUID(str(thread_id))
    except ValueError:
        return None
    query = (
        sb.table("workflow_threads").select(THREAD_COLUMNS).eq("workflow_thread_id", str(thread_id))
    )
    if api_key_id is not None:
        query = query.eq("api_key_id", str(api_key_id))
    res = await call(lambda: query.limit(1).execute())
    found = first_of(res)
    return _decode(found) if found else None


async def update_thread(sb: AsyncClient, thread_id: UUID | str, **columns: Any) -> None:
    """Set the named columns of one thread (never ``usage_stats`` nor ``status``)."""
    if "usage_stats" in columns:
        raise ValueError("usage_stats is written only by record_usage_events")
    if "status" in columns:
        raise ValueError("status moves only through flow.db.call_state")
    await update_call_row(sb, "workflow_threads", thread_id, columns)


async def stop_requested(sb: AsyncClient, thread_ids: list[str]) -> list[str]:
    """Which of these calls another instance was asked to stop."""
    if not thread_ids:
        return []
    res = await call(
        lambda: (
            sb.table("workflow_threads")
            .select("workflow_thread_id")
            .in_("workflow_thread_id", thread_ids)
            .not_.is_("stop_requested_at", "null")
            .execute()
        )
    )
    return [str(r["workflow_thread_id"]) for r in rows_of(res)]


async def claim_webhook(sb: AsyncClient, thread_id: UUID | str) -> bool:
    """Claim the sending of a finished call's webhook: True for the one caller whose
    conditional update set ``webhook_claimed_at``, False for every later one (and while
    the call is unfinished)."""
    res = await call(
        lambda: (
            sb.table("workflow_threads")
            .update({"webhook_claimed_at": datetime.now(UTC).isoformat()})
            .eq("workflow_thread_id", str(thread_id))
            .is_("webhook_claimed_at", "null")
            .in_("status", [str(s) for s in FINISHED])
            .execute()
        )
    )
    return bool(rows_of(res))


async def webhook_sent(sb: AsyncClient, thread_id: UUID | str) -> None:
    """Mark a call's webhook delivered: no sweep sends it again."""
    await update_call_row(
        sb, "workflow_threads", thread_id, {"webhook_sent_at": datetime.now(UTC).isoformat()}
    )


async def claim_due_webhooks(
    sb: AsyncClient, *, lease_seconds: int, settle_seconds: int, max_age_seconds: int, limit: int
) -> list[str]:
    """Claim the webhooks due again (see the ``claim_due_webhooks`` SQL function): a
    claim never marked sent within ``lease_seconds``, or a finished call nobody claimed
    ``settle_seconds`` after it finished; calls created within ``max_age_seconds``."""
    args = {
        "p_lease_seconds": lease_seconds,
        "p_settle_seconds": settle_seconds,
        "p_max_age_seconds": max_age_seconds,
        "p_limit": limit,
    }
    res: Any = await call(sb.rpc("claim_due_webhooks", args).execute)
    return [str(r) for r in (res.data or [])]
