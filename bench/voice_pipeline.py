"""Real-audio calls over WebRTC: CPU per call and voice-to-voice latency of Flow's call
against the same Pipecat pipeline without Flow's metering, side by side.

One run brings up a local stack (the ledger), two fake OpenAI servers (STT, LLM and
TTS, in this process) and two voice servers (``bench/voice_server.py``, a process
each, each with its own fake). Each round runs two calls at the same time, one
``flow`` and one ``bare``, each in its own server, so that the machine's other work
weighs on both alike; the servers swap roles every round, after a warm-up call of each
kind in each. In each call a caller (aiortc, in this process) talks for ``--seconds``:
the tests' recordings in turn, each reply heard to its end, with deterministic VAD and
turn ends (``FLOW_VAD_STOP_SECS=0.5``, ``FLOW_TURN_STOP=timeout``).

1. CPU: a server's CPU time (all its threads) from the offer to the call's end,
   divided by the call's length: the cores a call holds. The overhead is the median
   of the rounds' ratios (target: Flow adds at most 3 %). The database's own work for
   the ledger runs in Postgres, not in the server, and is not counted.
2. Latency: from the end of the caller's voice to the bot's first sound at the caller,
   every turn; the p50 of each side and their difference (target: at most 5 ms).

Each ``flow`` call's ledger is checked against what its fake vendor received and
served, and each call for dropouts in the bot's speech (see ``bench/voice.py``).
Run: ``.venv/bin/python bench/voice_pipeline.py`` (9 rounds of 60 s, about 11
minutes); ``--rounds 1 --seconds 15`` for a quick run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.voice import (
    CallerResult,
    add_key,
    call,
    counts,
    ledger_problems,
    start_stack,
    vendor,
    voice_server,
)
from flow import localstack

MODES = ("flow", "bare")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measured_call(
    server: str, mode: str, seconds: float
) -> tuple[CallerResult, dict[str, float]]:
    result = await call(server, mode, seconds)
    if not result.thread_id:
        raise RuntimeError(f"{mode} call failed to join: {result.error}")
    async with httpx.AsyncClient(timeout=150) as http:
        res = await http.get(f"{server}/calls/{result.thread_id}")
        res.raise_for_status()
    return result, res.json()


async def side_by_side(
    servers: list[str], modes: tuple[str, ...], seconds: float
) -> list[tuple[CallerResult, dict[str, float]]]:
    """One call in each server at the same time, of the kinds ``modes`` says."""
    pairs = zip(servers, modes, strict=True)
    return list(await asyncio.gather(*(measured_call(s, m, seconds) for s, m in pairs)))


async def run(args: argparse.Namespace) -> int:
    state, info = start_stack()
    fakes = [await vendor().start(), await vendor().start()]
    try:
        key_id, _ = add_key(info)
        with contextlib.ExitStack() as stack:
            servers = [
                stack.enter_context(voice_server(info, key_id, fake.base_url, state / f"spool{n}"))
                for n, fake in enumerate(fakes)
            ]
            # Warm-up, both kinds in both servers: imports, the VAD model, connections.
            for modes in (MODES, MODES[::-1]):
                await side_by_side(servers, modes, 5)
            cores: dict[str, list[float]] = {m: [] for m in MODES}
            latencies: dict[str, list[float]] = {m: [] for m in MODES}
            ratios, problems = [], []
            for r in range(args.rounds):
                # The two calls run at the same time, each in its own server, so the
                # machine's other work weighs on both alike; the servers swap roles.
                modes = MODES if r % 2 == 0 else MODES[::-1]
                since = [counts(fake) for fake in fakes]
                calls = await side_by_side(servers, modes, args.seconds)
                pair = {}
                for n, (mode, (result, server_side)) in enumerate(zip(modes, calls, strict=True)):
                    pair[mode] = server_side["cpu_seconds"] / server_side["wall_seconds"]
                    cores[mode].append(pair[mode])
                    latencies[mode] += [x for x in result.latencies if x is not None]
                    print(
                        f"  round {r + 1} {mode:<4}: {server_side['wall_seconds']:5.1f} s, "
                        f"{server_side['cpu_seconds']:6.2f} s CPU ({pair[mode]:.3f} cores), "
                        f"{len(result.latencies)} turns, dropouts {result.dropouts}, "
                        f"late {result.late_seconds * 1000:.0f} ms",
                        flush=True,
                    )
                    if not result.real_time or server_side["status"] != "ended":
                        problems.append(f"{mode} {result.summary()}")
                    if mode == "flow":
                        wrong = ledger_problems(info, [result.thread_id], fakes[n], since[n])
                        problems += [f"flow call {result.thread_id} ledger: {p}" for p in wrong]
                ratios.append(pair["flow"] / pair["bare"] - 1)
    finally:
        for fake in fakes:
            await fake.stop()
        localstack.destroy(state)

    print(
        f"\n{args.rounds} pairs of {args.seconds:g} s calls at the same time "
        "(real audio over WebRTC, loopback)"
    )
    for mode, label in (("bare", "bare Pipecat pipeline"), ("flow", "Flow's call (metered)")):
        c = statistics.median(cores[mode])
        print(f"  {label:<24}: {c:.3f} cores, {c * 60:5.2f} CPU s per 60 s of call")
    overhead = statistics.median(ratios)
    print(f"  CPU overhead (median of pairs): {overhead:+.1%} (target <= +3%)")
    if latencies["flow"] and latencies["bare"]:
        p50 = {m: statistics.median(latencies[m]) * 1000 for m in MODES}
        p90 = {m: percentile(latencies[m], 0.9) * 1000 for m in MODES}
        print(
            f"voice-to-voice latency over {len(latencies['bare'])} / {len(latencies['flow'])} "
            "turns (bare / flow):"
        )
        print(f"  bare: p50 {p50['bare']:.0f} ms, p90 {p90['bare']:.0f} ms")
        print(f"  flow: p50 {p50['flow']:.0f} ms, p90 {p90['flow']:.0f} ms")
        print(f"  added at p50: {p50['flow'] - p50['bare']:+.1f} ms (target <= 5 ms)")
    for problem in problems:
        print(f"PROBLEM {problem}")
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="pairs of calls")
    parser.add_argument("--seconds", type=float, default=60.0, help="conversation per call")
    args = parser.parse_args()
    from loguru import logger

    logger.remove()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
