"""Join-to-answer time of a WebRTC call: ``POST /api/bot/join`` with an SDP offer until
the SDP answer is back, against a plain aiortc answer of the same offer, side by side.

One run brings up a local stack and two servers, each its own process:

- ``flow``: ``flow serve`` (the real app, its instance jobs on), the join
  authenticated with a local key (checked in the database), the offer checked and
  answered by the bot runner's peer, the call's thread inserted, the call started;
- ``plain``: an aiohttp endpoint that answers the offer with aiortc alone
  (``RTCPeerConnection``, a sending audio track, ``setRemoteDescription``,
  ``createAnswer``, ``setLocalDescription``): what any WebRTC answer costs.

Both offer loopback candidates only. A caller (aiortc, in this process) makes its offer
(not timed), posts it, takes the answer, connects and hangs up; the next join starts
once the call has ended, so joins do not queue behind each other. The two servers take
turns (the order alternates). Reported: p50 and p90 of each, and what Flow adds at p50
(target: Flow's p50 under 300 ms).
Run: ``.venv/bin/python bench/webrtc_join.py`` (``--joins 10`` for a quick run).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.processes import free_port, process
from bench.voice import add_key, settings_env, start_stack
from flow import localstack
from flow.demo.caller import Caller

FINISHED = ("completed", "failed")


# --- the servers ---------------------------------------------------------------------
def serve_flow(port: int) -> None:
    """``flow serve``, settings from the environment."""
    from flow.cli import main as flow

    flow(["serve", "--host", "127.0.0.1", "--port", str(port)])


def serve_plain(port: int) -> None:
    """Answers an offer with aiortc alone; closes each peer when its caller hangs up."""
    from aiohttp import web
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import AudioStreamTrack

    from flow.bot.webrtc import use_loopback_candidates

    use_loopback_candidates()
    peers: set[RTCPeerConnection] = set()

    async def offer(request: web.Request) -> web.Response:
        body = await request.json()
        pc = RTCPeerConnection()
        peers.add(pc)

        @pc.on("connectionstatechange")
        async def _state() -> None:
            if pc.connectionState in ("failed", "closed"):
                peers.discard(pc)
                await pc.close()

        pc.addTrack(AudioStreamTrack())
        await pc.setRemoteDescription(RTCSessionDescription(body["sdp"], body["type"]))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = pc.localDescription
        return web.json_response({"sdp": answer.sdp, "type": answer.type})

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"peers": len(peers)})

    app = web.Application()
    app.router.add_post("/offer", offer)
    app.router.add_get("/health", health)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --- the callers -----------------------------------------------------------------------
async def join_flow(http: httpx.AsyncClient, base: str, key: str) -> float:
    caller = Caller()
    try:
        offer = await caller.offer()
        t0 = time.perf_counter()
        res = await http.post(
            f"{base}/api/bot/join",
            json={"transport": "webrtc", "webrtc_offer": offer, "process_insights": False},
            headers={"Authorization": f"Bearer {key}"},
        )
        elapsed = time.perf_counter() - t0
        res.raise_for_status()
        await caller.accept(res.json()["webrtc_answer"], wait_seconds=15)
    finally:
        await caller.hang_up()
    thread = res.json()["workflow_thread_id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the call ends once the caller has hung up
        status = (
            await http.get(f"{base}/api/bot/{thread}", headers={"Authorization": f"Bearer {key}"})
        ).json()["status"]
        if status in FINISHED:
            return elapsed
        await asyncio.sleep(0.1)
    raise RuntimeError(f"call {thread} did not end within 30 s")


async def join_plain(http: httpx.AsyncClient, base: str, _key: str) -> float:
    caller = Caller()
    try:
        offer = await caller.offer()
        t0 = time.perf_counter()
        res = await http.post(f"{base}/offer", json=offer)
        elapsed = time.perf_counter() - t0
        res.raise_for_status()
        await caller.accept(res.json(), wait_seconds=15)
    finally:
        await caller.hang_up()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the server closes the peer once it hears
        if not (await http.get(f"{base}/health")).json()["peers"]:
            return elapsed
        await asyncio.sleep(0.05)
    raise RuntimeError("the plain server did not close its peer within 30 s")


async def run(args: argparse.Namespace) -> int:
    from flow.bot.webrtc import use_loopback_candidates

    use_loopback_candidates()
    state, info = start_stack()
    try:
        _, key = add_key(info)
        env = {
            **info.env(),
            **settings_env("http://127.0.0.1:9/v1", state / "spool"),  # nothing is said
            "FLOW_LOG_LEVEL": "WARNING",
        }
        flow_port, plain_port = free_port(), free_port()
        flow_url, plain_url = f"http://127.0.0.1:{flow_port}", f"http://127.0.0.1:{plain_port}"
        with (
            process([__file__, "serve-flow", str(flow_port)], env, f"{flow_url}/health"),
            process([__file__, "serve-plain", str(plain_port)], env, f"{plain_url}/health"),
        ):
            sides: dict[str, tuple[Any, str]] = {
                "flow": (join_flow, flow_url),
                "plain": (join_plain, plain_url),
            }
            times: dict[str, list[float]] = {name: [] for name in sides}
            async with httpx.AsyncClient(timeout=30) as http:
                for join, base in sides.values():  # warm-up
                    await join(http, base, key)
                for n in range(args.joins):
                    order = list(sides) if n % 2 == 0 else list(sides)[::-1]
                    for name in order:
                        join, base = sides[name]
                        times[name].append(await join(http, base, key))
    finally:
        localstack.destroy(state)

    p50 = {name: statistics.median(t) * 1000 for name, t in times.items()}
    p90 = {name: sorted(t)[int(0.9 * (len(t) - 1))] * 1000 for name, t in times.items()}
    print(f"{args.joins} joins each, alternating (offer -> SDP answer, over HTTP on loopback)")
    print(f"  plain aiortc answer        : p50 {p50['plain']:6.1f} ms, p90 {p90['plain']:6.1f} ms")
    print(f"  Flow POST /api/bot/join    : p50 {p50['flow']:6.1f} ms, p90 {p90['flow']:6.1f} ms")
    print(
        f"  Flow adds {p50['flow'] - p50['plain']:+.1f} ms at p50 "
        f"({p50['flow'] / p50['plain']:.1f}x); target: Flow's p50 < 300 ms: "
        f"{'met' if p50['flow'] < 300 else 'MISSED'}"
    )
    return 0


def main() -> int:
    if sys.argv[1:2] == ["serve-flow"]:
        serve_flow(int(sys.argv[2]))
        return 0
    if sys.argv[1:2] == ["serve-plain"]:
        serve_plain(int(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--joins", type=int, default=40, help="joins per side")
    args = parser.parse_args()
    from loguru import logger

    logger.remove()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
