"""Concurrent real-audio calls over WebRTC on one machine, in real time: how many can
one process hold, with Flow's metering and without, side by side.

One run brings up a local stack, the fake OpenAI (in this process) and the voice server
(``bench/voice_server.py``, its own process). At each level N, N callers (aiortc, in
processes of ``--per-process`` callers each) call the server at once and talk for
``--seconds``; the level runs with Flow's call (``flow``) and then with the same
Pipecat pipeline without Flow's metering (``bare``), the order alternating by level.
A level holds when every call:

- ran in real time: every caller's line was answered, the bot's speech had no dropout
  (no gap of 5 ms or more inside a reply: its audio reached the transport in time),
  and none of it arrived more than 150 ms behind its own timeline;
- for ``flow``, was metered exactly: the ledger's events are, one for one, the WAVs the
  fake STT received (to the millisecond), the completions' usage and the TTS
  requests' characters, none estimated.

The answer is the highest level that holds before one that does not (target: at least
6 WebRTC calls on the 2-core machine). The callers, the fake vendor and Postgres run on
the same machine and take their share of it; the callers' own lateness is printed
(``mic late``): a caller late to send its audio means the machine, not the server,
ran out. Run: ``.venv/bin/python bench/voice_calls.py`` (levels 2, 4, 6, 8, 10 of 30 s);
``--levels 2,4 --seconds 10`` for a quick run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.voice import (
    CallerResult,
    add_key,
    callers_in_processes,
    counts,
    ledger_problems,
    start_stack,
    vendor,
    voice_server,
)
from flow import localstack

MODES = ("flow", "bare")


async def level(
    server: str,
    mode: str,
    n: int,
    args: argparse.Namespace,
    check: Callable[[list[str]], list[str]],
) -> tuple[bool, str]:
    async with httpx.AsyncClient(timeout=150) as http:
        before = (await http.get(f"{server}/cpu")).json()
        results: list[CallerResult] = await callers_in_processes(
            server, mode, n, args.seconds, args.per_process
        )
        ended = [
            (await http.get(f"{server}/calls/{r.thread_id}")).json() for r in results if r.thread_id
        ]
        after = (await http.get(f"{server}/cpu")).json()
    cpu = after["cpu_seconds"] - before["cpu_seconds"]
    problems = [f"call {r.thread_id or '?'}: {r.error}" for r in results if r.error]
    problems += [f"{s['status']} in the server" for s in ended if s["status"] != "ended"]
    late = max(r.late_seconds for r in results)
    dropouts = sum(r.dropouts for r in results)
    unanswered = sum(r.latencies.count(None) + (not r.latencies) for r in results)
    if mode == "flow":
        problems += check([r.thread_id for r in results if r.thread_id])
    holds = not problems and all(r.real_time for r in results)
    latencies = [x for r in results for x in r.latencies if x is not None]
    p50 = f"{statistics.median(latencies) * 1000:5.0f} ms" if latencies else "    -   "
    wall = max((s["wall_seconds"] for s in ended), default=args.seconds)
    line = (
        f"  {mode:<4} {n:>3} calls: {'holds' if holds else 'FAILS'}  latency p50 {p50}, "
        f"dropouts {dropouts}, late max {late * 1000:4.0f} ms, unanswered {unanswered}, "
        f"mic late max {max(r.microphone_late_seconds for r in results) * 1000:4.0f} ms, "
        f"server {cpu / wall:.2f} cores, loop stalls {after['stalls'] - before['stalls']} "
        f"(max {after['max_stall_ms']:.0f} ms)"
        + (f", ledger exact: {'yes' if not problems else 'NO'}" if mode == "flow" else "")
    )
    for problem in problems[:5]:
        line += f"\n      {problem}"
    return holds, line


async def run(args: argparse.Namespace) -> int:
    levels = [int(x) for x in args.levels.split(",")]
    state, info = start_stack()
    fake = await vendor().start()
    best = {m: 0 for m in MODES}
    failed = {m: False for m in MODES}
    try:
        key_id, _ = add_key(info)
        with voice_server(info, key_id, fake.base_url, state / "spool", "--watch-loop") as server:
            for mode in MODES:  # warm-up: imports, the VAD model, connections
                await callers_in_processes(server, mode, 1, 5, 1)
            print(
                f"{args.seconds:g} s of conversation per call, {args.per_process} callers a process"
            )
            for i, n in enumerate(levels):
                for mode in MODES if i % 2 == 0 else MODES[::-1]:
                    if failed[mode]:
                        continue
                    since = counts(fake)

                    def check(ids: list[str], since: dict[str, int] = since) -> list[str]:
                        return ledger_problems(info, ids, fake, since)

                    holds, line = await level(server, mode, n, args, check)
                    print(line, flush=True)
                    if holds:
                        best[mode] = max(best[mode], n)
                    else:
                        failed[mode] = True
                if all(failed.values()):
                    break
    finally:
        await fake.stop()
        localstack.destroy(state)
    print(
        f"\nconcurrent real-audio WebRTC calls held in real time: Flow {best['flow']}, "
        f"bare pipeline {best['bare']} (levels tried: {args.levels}; target >= 6)"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="2,4,6,8,10", help="calls at once, in order")
    parser.add_argument("--seconds", type=float, default=30.0, help="conversation per call")
    parser.add_argument("--per-process", type=int, default=3, help="callers per process")
    args = parser.parse_args()
    from loguru import logger

    logger.remove()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
