"""``flow serve``'s HTTP server: Uvicorn with Flow's own handling of SIGTERM and SIGINT.

Uvicorn's own handling closes the listener at the first signal and gives requests a few
seconds; live calls would be cut. Here the first signal starts the app's drain
(:mod:`flow.bot.drain`) and the listener stays open until the drain is over; only then
does Uvicorn shut down as usual (the app's shutdown ends what is left, flushes usage,
exports and PostHog). A second signal hurries the drain: calls still live end at once,
their usage flushed. The process then exits 0 (a signal that arrives before the app has
started stops it the ordinary way).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from types import FrameType

import uvicorn
from fastapi import FastAPI

from flow.bot.drain import Drain

log = logging.getLogger(__name__)

# Uvicorn's wait for open connections once the drain is over (its default is none).
GRACEFUL_SHUTDOWN_SECONDS = 10


class FlowServer(uvicorn.Server):
    """Uvicorn's server for one app whose ``state.drain`` is a :class:`Drain`."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app
        self._signals = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: it runs between two bytecodes of the loop's thread, so it only
        # schedules work. Unlike Uvicorn's, it records no signal to raise again at exit.
        self._signals += 1
        drain: Drain | None = getattr(self._app.state, "drain", None)
        if drain is None or self._loop is None or not self.started:
            self.should_exit = True
            return
        name = signal.Signals(sig).name
        if self._signals == 1:
            log.warning("%s: draining (a second signal ends the calls at once)", name)
            self._loop.call_soon_threadsafe(self._drain_then_exit, drain)
        else:
            log.warning("%s again: ending the live calls now", name)
            self._loop.call_soon_threadsafe(drain.hurry)

    def _drain_then_exit(self, drain: Drain) -> None:
        def exit_now(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                log.error("the drain failed", exc_info=task.exception())
            self.should_exit = True

        drain.begin().add_done_callback(exit_now)
