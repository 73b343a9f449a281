"""Draining: how an instance leaves without hanging up on anyone.

On the first SIGTERM (or SIGINT) :meth:`Drain.run` stops the instance taking calls
(``/health/ready`` and joins answer 503, so the load balancer sends joins elsewhere) and
waits up to ``FLOW_DRAIN_SECONDS`` for its calls to end by themselves, post-call steps
included. When that time is up, the bot says ``FLOW_SHUTDOWN_GOODBYE`` on every call
still live and hangs up (end reason ``shutdown``; the call is processed like any other),
and the drain waits at most :data:`HANG_UP_SECONDS` more. :meth:`Drain.hurry` (a second
signal) cuts every wait short: whatever still runs is then ended at once by the
runner's shutdown, its usage flushed all the same.

The process keeps its listener open all along: health checks, stop requests and the
requests of its own calls (a WebRTC caller's candidates) still reach it. The server
stops when :meth:`Drain.run` returns, then the app's shutdown flushes exports and
PostHog.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from flow import metrics

log = logging.getLogger(__name__)

# After the goodbyes: time for the last words, the end of the pipelines and the
# post-call steps (transcript, insights) of the calls that were hung up.
HANG_UP_SECONDS = 60.0
POLL_SECONDS = 0.1


class Drainable(Protocol):
    """What a drain needs of the runner (:class:`flow.bot.runner.BotRunner`)."""

    @property
    def active_calls(self) -> list[str]: ...

    def stop_taking_calls(self) -> None: ...

    async def hang_up(self, goodbye: str) -> None: ...


class Drain:
    """One instance's drain; the API reads :attr:`draining`.

    Parameters:
        drain_seconds: ``FLOW_DRAIN_SECONDS``: how long calls may go on by themselves.
        goodbye: ``FLOW_SHUTDOWN_GOODBYE``: what the bot says when that time is up.
        hang_up_seconds: how long the hung-up calls then have to finish.
    """

    def __init__(
        self, drain_seconds: float, goodbye: str, *, hang_up_seconds: float = HANG_UP_SECONDS
    ) -> None:
        self.drain_seconds = drain_seconds
        self.goodbye = goodbye
        self.hang_up_seconds = hang_up_seconds
        self.runner: Drainable | None = None
        self.draining = False
        self._hurry = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def begin(self) -> asyncio.Task[None]:
        """Start draining (needs a running event loop); the task ends when it is done.
        Idempotent."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="flow-drain")
        return self._task

    def hurry(self) -> None:
        """Stop waiting: the calls still live are to be ended at once."""
        self._hurry.set()

    @property
    def hurried(self) -> bool:
        return self._hurry.is_set()

    async def run(self) -> None:
        self.draining = True
        metrics.DRAINING.set(1)
        runner = self.runner
        if runner is None:
            return
        runner.stop_taking_calls()
        log.warning(
            "draining: no new calls; %d live calls have up to %g s to end",
            len(runner.active_calls),
            self.drain_seconds,
        )
        if await self._calls_end(runner, self.drain_seconds):
            log.warning("drained: every call has ended")
            return
        if self.hurried:
            log.warning("drain cut short: %d calls end now", len(runner.active_calls))
            return
        log.warning("drain time is up: %d calls hear the goodbye", len(runner.active_calls))
        await runner.hang_up(self.goodbye)
        if not await self._calls_end(runner, self.hang_up_seconds):
            log.warning(
                "%d calls did not end after the goodbye: ending them now", len(runner.active_calls)
            )

    async def _calls_end(self, runner: Drainable, seconds: float) -> bool:
        """Wait until no call is left (True), ``seconds`` pass or the drain is hurried."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while runner.active_calls:
            left = deadline - loop.time()
            if self.hurried or left <= 0:
                return False
            try:
                await asyncio.wait_for(self._hurry.wait(), min(POLL_SECONDS, left))
            except TimeoutError:
                pass
        return True
