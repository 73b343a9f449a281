"""The writes that record a call's progress on its thread, and what happens when the
database cannot take them.

Each write (a status move through :mod:`flow.db.call_state`, the transcript and end
time) is retried with backoff while the database is unreachable, and never raises into
the call. A call whose end still could not be written is kept here (``unsettled``) and
written by :meth:`ThreadWrites.settle` at each heartbeat of the instance once the
database is back: its transcript, then ``failed`` with ``database_unavailable`` unless
the call got further (a finished call is never moved). So a database blip at a call's
end never leaves it ``running``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from supabase import AsyncClient

from flow.db import call_state
from flow.db import threads as threads_repo
from flow.db.call_state import CallStatus, ErrorStage
from flow.db.client import retry_unavailable

log = logging.getLogger(__name__)

UNSETTLED_MESSAGE = (
    "the database was unreachable when the call ended: its usage is recorded, its end "
    "and post-call steps could not be"
)


class ThreadWrites:
    """One runner's thread writes.

    Parameters:
        sb: the database client.
    """

    def __init__(self, sb: AsyncClient) -> None:
        self._sb = sb
        self._unwritten: set[str] = set()
        self._transcript_saves: set[str] = set()
        self.unsettled: dict[str, dict[str, Any]] = {}

    async def move(self, tid: str, status: CallStatus, **columns: Any) -> bool:
        """Move the thread (see :func:`flow.db.call_state.move`); False when refused or
        when the database could not be reached."""
        try:
            return await retry_unavailable(
                lambda: call_state.move(self._sb, tid, status, **columns)
            )
        except Exception:
            log.exception("thread %s: could not move it to %s", tid, status)
            self._unwritten.add(tid)
            return False

    async def update(self, tid: str, **columns: Any) -> None:
        try:
            await retry_unavailable(lambda: threads_repo.update_thread(self._sb, tid, **columns))
        except Exception:
            log.exception("thread %s: could not save the call's end", tid)
            self._unwritten.add(tid)

    async def fail(self, tid: str, stage: str, code: str, message: str) -> None:
        try:
            await retry_unavailable(
                lambda: call_state.fail(self._sb, tid, stage=stage, code=code, message=message)
            )
        except Exception:
            log.exception("thread %s: could not mark it failed", tid)
            self._unwritten.add(tid)

    def save_transcript_soon(self, tid: str, transcript: Callable[[], Any]) -> None:
        """Save a live call's transcript so far, off the frame path; a save already in
        flight takes the newest turns when it runs, so at most one waits. A failure is
        only logged: the end of the call saves it anyway."""
        if tid in self._transcript_saves:
            return
        self._transcript_saves.add(tid)

        async def save() -> None:
            try:
                await asyncio.sleep(0)  # the turns of one moment go in one write
                await threads_repo.update_thread(self._sb, tid, transcript=transcript())
            except Exception:
                log.debug("call %s: live transcript not saved", tid, exc_info=True)
            finally:
                self._transcript_saves.discard(tid)

        asyncio.get_running_loop().create_task(save(), name=f"transcript-{tid}")

    def keep_if_unwritten(self, tid: str, end: dict[str, Any]) -> None:
        """At the end of a call: if any of its writes was lost, keep its end to write."""
        if tid in self._unwritten:
            self._unwritten.discard(tid)
            self.unsettled[tid] = end

    async def settle(self) -> list[str]:
        """Write the ends kept by :meth:`keep_if_unwritten`; returns the ids written."""
        settled = []
        for tid, end in list(self.unsettled.items()):
            try:
                await threads_repo.update_thread(self._sb, tid, **end)
                await call_state.fail(
                    self._sb,
                    tid,
                    stage=ErrorStage.CALL,
                    code="database_unavailable",
                    message=UNSETTLED_MESSAGE,
                )
            except Exception:
                log.warning("call %s: its end still cannot be written", tid)
                continue
            self.unsettled.pop(tid, None)
            settled.append(tid)
        return settled
