"""``flow_instances``: which Flow instances are alive, by their heartbeat.

Each instance beats every few seconds (:mod:`flow.bot.instance`); a call records the
instance that runs it (``workflow_threads.instance_id``), so any live instance can fail
the calls of one that stopped beating, and a stop request for a call nobody runs ends
it at once.
"""

from __future__ import annotations

from supabase import AsyncClient

from flow.db.client import call


async def heartbeat(sb: AsyncClient, instance_id: str, hostname: str, pid: int) -> None:
    await call(
        sb.rpc(
            "flow_instance_heartbeat",
            {"p_id": instance_id, "p_hostname": hostname, "p_pid": pid},
        ).execute
    )


async def gone(sb: AsyncClient, instance_id: str) -> None:
    """The instance stops on purpose (after ending its calls)."""
    await call(sb.rpc("flow_instance_gone", {"p_id": instance_id}).execute)
