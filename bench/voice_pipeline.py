"""Real-audio calls over WebRTC: CPU per call and voice-to-voice latency of Flow's call
against the same Pipecat pipeline without Flow's metering, side by side.

One run brings up a local stack (the ledger), the fake OpenAI (STT, LLM and TTS, in
this process) and the voice server (``bench/voice_server.py``, a process of its own,
which runs both kinds of call). Calls run one at a time, in pairs (one ``flow``, one
``bare``; the order alternates), after a warm-up call of each. In each call a caller
(aiortc, in this process) talks for ``--seconds``: the tests' recordings in turn, each
reply heard to its end, with deterministic VAD and turn ends (``FLOW_VAD_STOP_SECS=0.5``,
``FLOW_TURN_STOP=timeout``).

1. CPU: the voice server's CPU time (all its threads) from the offer to the call's
   end, divided by the call's length: the cores a call holds. The overhead is the
   median of the pairs' ratios (target: Flow adds at most 3 %). The database's own
   work for the ledger runs in Postgres, not in the server, and is not counted.
2. Latency: from the end of the caller's voice to the bot's first sound at the caller,
   every turn; the p50 of each side and their difference (target: at most 5 ms).

Each ``flow`` call's ledger is checked against what the fake vendor received and
served, and each call for dropouts in the bot's speech (see ``bench/voice.py``).
Run: ``.venv/bin/python bench/voice_pipeline.py`` (3 pairs of 60 s calls, about 8
minutes); ``--rounds 1 --seconds 15`` for a quick run.
"""

from __future__ import annotations

import argparse
import asyncio
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
    free_port,
    ledger_problems,
    process,
    settings_env,
    start_stack,
    vendor,
)
from flow import localstack

SERVER = str(Path(__file__).resolve().with_name("voice_server.py"))
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


async def run(args: argparse.Namespace) -> int:
    state, info = start_stack()
    fake = await vendor().start()
    try:
        key_id, _ = add_key(info)
        env = {**info.env(), **settings_env(fake.base_url, state / "spool")}
        port = free_port()
        server = f"http://127.0.0.1:{port}"
        argv = [SERVER, "--port", str(port), "--api-key-id", key_id]
        with process(argv, env, f"{server}/cpu"):
            for mode in MODES:  # warm-up: imports, the VAD model, connections
                await measured_call(server, mode, 5)
            cores: dict[str, list[float]] = {m: [] for m in MODES}
            latencies: dict[str, list[float]] = {m: [] for m in MODES}
            ratios, problems = [], []
            for r in range(args.rounds):
                order = MODES if r % 2 == 0 else MODES[::-1]
                pair = {}
                for mode in order:
                    since = counts(fake)
                    result, server_side = await measured_call(server, mode, args.seconds)
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
                        problems.append(f"{mode} call {result.thread_id}: {result}")
                    if mode == "flow":
                        wrong = ledger_problems(info, [result.thread_id], fake, since)
                        problems += [f"flow call {result.thread_id} ledger: {p}" for p in wrong]
                ratios.append(pair["flow"] / pair["bare"] - 1)
    finally:
        await fake.stop()
        localstack.destroy(state)

    print(f"\n{args.rounds} pairs of {args.seconds:g} s calls (real audio over WebRTC, loopback)")
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
    parser.add_argument("--rounds", type=int, default=3, help="pairs of calls")
    parser.add_argument("--seconds", type=float, default=60.0, help="conversation per call")
    args = parser.parse_args()
    from loguru import logger

    logger.remove()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
