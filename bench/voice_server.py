"""The real-audio benchmarks' bot server: one process answering WebRTC callers with a
bot, either Flow's call or the same Pipecat pipeline without Flow's metering, and
reporting the CPU each call cost this process.

- ``flow``: the call as ``POST /api/bot/join`` makes it, minus HTTP and auth: a thread
  row, then the real :class:`~flow.bot.runner.BotRunner` (its instance-wide jobs off)
  answers the offer and runs the call: the pipeline with the inference tracker and
  the usage processor, the meter writing ahead and flushing to the ledger, the live
  transcript, the thread's status moves, the call's end.
- ``bare``: the offer answered by the same code, the same services from the same
  factory (:func:`~flow.bot.services.default_services`), the pipeline wired by the same
  :func:`~flow.bot.pipeline.build_call` without a meter, run by Pipecat's runner.

Both run in this process, one after the other or side by side, so they share its
warm-up, its imports and its machine. Settings come from the environment.

``POST /calls`` ``{"mode": "flow"|"bare", "offer": {"sdp", "type"}}`` answers
``{"id", "answer"}``; ``GET /calls/{id}`` waits (at most 120 s) for the call to end and
answers ``{"cpu_seconds", "wall_seconds", "status"}``; ``GET /cpu`` is the process's
CPU seconds so far and, with ``--watch-loop``, how often its event loop was held up
for 10 ms or more (``stalls``, ``max_stall_ms``: the chunks of the bot's audio are
handed to the transport 10 ms apart, so a stall that long can leave a gap in it).
Run: ``python bench/voice_server.py --port PORT --api-key-id ID [--watch-loop]``.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flow.bot.contract import BotConfig, CallRequest, WebRTCOffer
from flow.config import Settings

CALL_LIMIT_SECONDS = 600.0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Measured:
    task: asyncio.Future[Any]
    cpu_start: float
    wall_start: float
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    status: str = "running"


class LoopWatch:
    """Counts the times the event loop woke up 10 ms or more later than asked."""

    TICK_SECONDS = 0.02

    def __init__(self) -> None:
        self.stalls = 0
        self.max_stall_seconds = 0.0

    async def run(self) -> None:
        while True:
            asked = time.monotonic() + self.TICK_SECONDS
            await asyncio.sleep(self.TICK_SECONDS)
            stall = time.monotonic() - asked
            if stall >= 0.01:
                self.stalls += 1
                self.max_stall_seconds = max(self.max_stall_seconds, stall)


class VoiceServer:
    def __init__(self, settings: Settings, api_key_id: str) -> None:
        self.settings = settings
        self.api_key_id = api_key_id
        self.calls: dict[str, Measured] = {}
        self.watch: LoopWatch | None = None

    async def start(self) -> None:
        from flow.bot.runner import BotRunner
        from flow.bot.shared import warm_up
        from flow.db.client import create_client
        from flow.metering.meter import Metering
        from flow.metering.pricing import PriceBook

        await warm_up(self.settings)  # as the API's lifespan does
        self.sb = await create_client(self.settings)
        self.prices = PriceBook.from_settings(self.settings)
        metering = Metering.from_settings(self.settings, self.sb, prices=self.prices)
        self.runner = BotRunner(self.settings, self.sb, metering=metering)

    async def post_call(self, request: web.Request) -> web.Response:
        body = await request.json()
        cpu, wall = cpu_seconds(), time.monotonic()
        tid = str(uuid.uuid4())
        offer = WebRTCOffer(sdp=body["offer"]["sdp"], type=body["offer"]["type"])
        call = CallRequest(
            workflow_thread_id=tid,
            api_key_id=self.api_key_id,
            transport="webrtc",
            bot_config=BotConfig(greeting=""),
            end_user_id="bench-caller",
            process_insights=False,
        )
        if body["mode"] == "flow":
            answer = await self._join(call, offer)
            task: asyncio.Future[Any] = asyncio.ensure_future(self.runner.wait(tid))
        else:
            from flow.bot.webrtc import answer_offer

            peer = await answer_offer(offer, self.settings)
            answer = peer.answer
            task = asyncio.ensure_future(self._bare(call, peer))
        measured = Measured(task, cpu, wall)
        self.calls[tid] = measured
        task.add_done_callback(lambda t: self._ended(measured, t))
        return web.json_response({"id": tid, "answer": {"sdp": answer.sdp, "type": answer.type}})

    async def _join(self, call: CallRequest, offer: WebRTCOffer) -> Any:
        from flow.db import threads as threads_repo

        tid = call.workflow_thread_id
        answer = await self.runner.answer_webrtc(tid, offer)
        await threads_repo.create_thread(
            self.sb,
            workflow_thread_id=tid,
            api_key_id=call.api_key_id,
            transport="webrtc",
            bot_config=call.bot_config.model_dump(exclude_none=True),
            end_user_id=call.end_user_id,
            process_insights=False,
        )
        await self.runner.submit(call)
        return answer

    async def _bare(self, call: CallRequest, peer: Any) -> None:
        from pipecat.workers.runner import WorkerRunner

        from flow.bot.pipeline import build_call
        from flow.bot.services import default_services
        from flow.bot.webrtc import webrtc_transport

        try:
            bot = build_call(
                call,
                self.settings,
                services=default_services(self.settings, call),
                meter=None,
                price_book=self.prices,
                transport=webrtc_transport(peer),
                idle_timeout_seconds=self.settings.flow_idle_timeout_seconds,
            )
            runner = WorkerRunner(handle_sigint=False)
            await runner.add_workers(bot.worker)
            await asyncio.wait_for(runner.run(), CALL_LIMIT_SECONDS)
        finally:
            await peer.close()

    def _ended(self, measured: Measured, task: asyncio.Future[Any]) -> None:
        measured.cpu_seconds = cpu_seconds() - measured.cpu_start
        measured.wall_seconds = time.monotonic() - measured.wall_start
        failed = task.cancelled() or task.exception() is not None
        measured.status = "failed" if failed else "ended"

    async def get_call(self, request: web.Request) -> web.Response:
        measured = self.calls.get(request.match_info["id"])
        if measured is None:
            return web.json_response({"error": "no such call"}, status=404)
        await asyncio.wait([measured.task], timeout=120)
        return web.json_response(
            {
                "cpu_seconds": measured.cpu_seconds,
                "wall_seconds": measured.wall_seconds,
                "status": measured.status,
            }
        )

    async def get_cpu(self, _request: web.Request) -> web.Response:
        body: dict[str, float] = {"cpu_seconds": cpu_seconds()}
        if self.watch is not None:
            body.update(stalls=self.watch.stalls, max_stall_ms=self.watch.max_stall_seconds * 1000)
            self.watch.max_stall_seconds = 0.0
        return web.json_response(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-key-id", required=True)
    parser.add_argument("--watch-loop", action="store_true")
    args = parser.parse_args()
    from flow.logs import configure_logging

    settings = Settings()
    configure_logging(settings.flow_log_level)
    server = VoiceServer(settings, args.api_key_id)
    app = web.Application()
    app.router.add_post("/calls", server.post_call)
    app.router.add_get("/calls/{id}", server.get_call)
    app.router.add_get("/cpu", server.get_cpu)

    async def started(_app: web.Application) -> None:
        await server.start()
        if args.watch_loop:
            server.watch = LoopWatch()
            _app["watch"] = asyncio.ensure_future(server.watch.run())

    app.on_startup.append(started)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
