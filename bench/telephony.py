"""Concurrent phone calls in real time: how many Twilio Media Streams one instance carries
on this machine while each caller is answered about as fast as a caller alone, with
every ledger exact.

One run brings up its own local stack, the tests' fakes of OpenAI and of Twilio's REST
API (in this process), and ``flow serve`` in its own process: the real runner with
Silero VAD, Pipecat's OpenAI STT, LLM and TTS services (against the fake) and Pipecat's
Twilio serializer, as production runs it. Each call is Twilio emulated in Python
(``tests/telephony/twilio_phone.py``): the signed Voice webhook to a routed number, then
the Media Stream in real time: two recorded sentences (8 kHz mu-law, 20 ms frames),
each answered by the bot, then ``stop``; post-call insights run as usual.

The baseline is one call alone, measured first in the same run. A level of N
concurrent calls is in real time when its slowest answer (the bot's first sound after a
sentence ends) is within ``--slack`` times the lone call's, and every ledger is exact:
STT seconds equal the seconds the fake received, characters what it was asked to speak,
every completion is recorded once with the tokens it was served (or, cut off before
its usage arrived, as an estimate), and each call has one telephony leg of exactly its
stream's duration. Levels go up until
one is not. Also printed: the cores ``flow serve`` used during each level.

Run: ``.venv/bin/python bench/telephony.py`` (``--levels 4,8,12,16``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flow import localstack
from flow.config import Settings
from flow.db import keys as keys_repo
from flow.db import numbers as numbers_db
from flow.db.client import create_client
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.twilio_server import FakeTwilio
from tests.telephony.twilio_phone import MediaStream, Twilio, stream_of

ROOT = Path(__file__).resolve().parents[1]
MS = Decimal("0.001")
NUMBER = "+15550001111"


@dataclass
class CallRun:
    """One emulated call: its SID, the bot's answer times, the stream's duration."""

    call_sid: str = ""
    answers: list[float] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


async def one_call(twilio: Twilio, delay: float) -> CallRun:
    run = CallRun()
    await asyncio.sleep(delay)
    try:
        run.call_sid, res = await twilio.incoming_call(NUMBER, "+15557650000")
        res.raise_for_status()
        url, parameters = stream_of(res.text)
        phone = MediaStream(url, run.call_sid, twilio.account_sid)
        await phone.start(parameters)
        await asyncio.sleep(0.5)
        for sentence in ("order_status", "thank_you"):
            await phone.say(sentence)
            said = time.monotonic()
            await phone.hear_speech(wait_seconds=20)
            run.answers.append(time.monotonic() - said)
            await phone.quiet(1.0)
        await phone.stop()
        assert phone.started_at is not None and phone.stopped_at is not None
        run.seconds = phone.stopped_at - phone.started_at
    except Exception as exc:
        run.error = f"{exc.__class__.__name__}: {exc}"
    return run


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system, every thread) the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def ledger_problems(
    sb: Any, runs: list[CallRun], openai: FakeOpenAI, marks: tuple[int, int, int]
) -> list[str]:
    """What in the ledger differs from what the fakes received and served."""
    sids = [r.call_sid for r in runs]
    legs = (
        await sb.table("telephony_calls")
        .select("workflow_thread_id,call_sid,stream_started_at,stream_ended_at")
        .in_("call_sid", sids)
        .execute()
    ).data
    threads = [leg["workflow_thread_id"] for leg in legs]
    for _ in range(600):  # post-call steps: at most 60 s
        rows = (
            await sb.table("workflow_threads")
            .select("status")
            .in_("workflow_thread_id", threads)
            .execute()
        ).data
        if len(rows) == len(runs) and all(r["status"] in ("completed", "failed") for r in rows):
            break
        await asyncio.sleep(0.1)
    statuses = sorted({r["status"] for r in rows})
    events = (
        await sb.table("usage_events")
        .select(
            "workflow_thread_id,kind,input_tokens,output_tokens,characters,estimated,"
            "audio_seconds::text"
        )
        .in_("workflow_thread_id", threads)
        .execute()
    ).data
    served, uploads, speech = (
        openai.served[marks[0] :],
        openai.uploads[marks[1] :],
        openai.speech[marks[2] :],
    )
    problems = [] if statuses == ["completed"] else [f"statuses {statuses}"]

    def differs(what: str, got: Any, want: Any) -> None:
        if got != want:
            problems.append(f"{what}: ledger {got} != served {want}")

    differs(
        "stt seconds",
        sum(Decimal(e["audio_seconds"]) for e in events if e["kind"] == "stt"),
        sum(u.seconds.quantize(MS, ROUND_HALF_UP) for u in uploads),
    )
    # Every completion once: with the usage the fake sent, or (a reply the caller cut off
    # before its usage arrived) as an estimate. The fake's counts differ per request.
    llm = [e for e in events if e["kind"] == "llm"]
    reported = Counter((e["input_tokens"], e["output_tokens"]) for e in llm if not e["estimated"])
    sent = Counter((x.usage.prompt_tokens, x.usage.completion_tokens) for x in served)
    differs("completions", len(llm), len(served))
    differs("tokens not served", reported - sent, Counter())
    differs(
        "characters",
        sum(e["characters"] for e in events if e["kind"] == "tts"),
        sum(len(s.text) for s in speech),
    )
    metered = {e["workflow_thread_id"]: e for e in events if e["kind"] == "telephony"}
    differs("legs", len(metered), len(runs))
    for leg in legs:
        event = metered.get(leg["workflow_thread_id"])
        if event is None or leg["stream_ended_at"] is None:
            continue
        span = datetime.fromisoformat(leg["stream_ended_at"]) - datetime.fromisoformat(
            leg["stream_started_at"]
        )
        duration = Decimal(str(span.total_seconds())).quantize(MS, ROUND_HALF_UP)
        differs("leg seconds", Decimal(event["audio_seconds"]), duration)
    return problems


async def level(
    n: int, twilio: Twilio, sb: Any, openai: FakeOpenAI, pid: int
) -> tuple[list[CallRun], tuple[float, float], list[str]]:
    """N calls at once; their runs, the cores Flow and the callers used, the problems."""
    marks = (len(openai.served), len(openai.uploads), len(openai.speech))
    own = os.getpid()
    cpu0, mine0, wall0 = cpu_seconds(pid), cpu_seconds(own), time.monotonic()
    runs = await asyncio.gather(*(one_call(twilio, i * 0.25) for i in range(n)))
    wall = time.monotonic() - wall0
    cores = ((cpu_seconds(pid) - cpu0) / wall, (cpu_seconds(own) - mine0) / wall)
    problems = [r.error for r in runs if r.error]
    if not problems:
        problems = await ledger_problems(sb, runs, openai, marks)
    return runs, cores, problems


def serve(
    info: localstack.StackInfo, port: int, openai: FakeOpenAI, twilio: FakeTwilio, spool: Path
) -> subprocess.Popen[bytes]:
    """``flow serve`` on ``port``, Twilio's and OpenAI's fakes as its vendors."""
    env = {
        **os.environ,
        **info.env(),
        "PYTHONPATH": str(ROOT),
        "FLOW_ENV": "development",
        "FLOW_LOG_LEVEL": "WARNING",
        "OPENAI_API_KEY": "sk-bench",
        "OPENAI_BASE_URL": openai.base_url,
        "DEEPGRAM_API_KEY": "",
        "FLOW_GREETING": "",
        "FLOW_VAD_STOP_SECS": "0.5",
        "FLOW_TURN_STOP": "timeout",
        "FLOW_MAX_BOTS": "100",
        "FLOW_SYNC_ENABLED": "false",
        "POSTHOG_API_KEY": "",
        "UNKEY_ROOT_KEY": "",
        "FLOW_SPOOL_DIR": str(spool),
        "TWILIO_ACCOUNT_SID": twilio.account_sid,
        "TWILIO_AUTH_TOKEN": twilio.auth_token,
        "TWILIO_FROM_NUMBER": "+15550000000",
        "TWILIO_API_BASE_URL": twilio.base_url,
        "FLOW_PUBLIC_URL": f"http://127.0.0.1:{port}",
    }
    cmd = [sys.executable, "-m", "flow.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    for _ in range(400):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("flow serve did not start")


async def run(levels: list[int], slack: float) -> int:
    state = Path(tempfile.mkdtemp(prefix="flow-bench-telephony-"))
    info = localstack.up(state, fixed_ports=False, quiet=True)
    openai = await FakeOpenAI(
        replies=["Your order ships tomorrow.", "You are welcome. Goodbye!"],
        transcripts=["Where is my order?", "Thanks, that is all."],
        speech_tone_hz=400,
        json_answer='{"summary": "s", "key_points": [], "sentiment": "neutral", '
        '"action_items": []}',
    ).start()
    fake_twilio = await FakeTwilio().start()
    port = localstack.free_port(None)
    proc = None
    try:
        settings = Settings(
            supabase_url=info.supabase_url, supabase_service_role_key=info.service_role_key
        )
        sb = await create_client(settings)
        key, _ = await keys_repo.create_local_key(sb, "bench")
        await numbers_db.add_number(sb, NUMBER, key["id"], {})
        proc = serve(info, port, openai, fake_twilio, state / "spool")
        twilio = Twilio(f"http://127.0.0.1:{port}", fake_twilio.auth_token, fake_twilio.account_sid)
        await level(1, twilio, sb, openai, proc.pid)  # warm-up: models loaded, caches filled
        runs, cores, problems = await level(1, twilio, sb, openai, proc.pid)
        if problems:
            print(f"the lone call failed: {problems}")
            return 1
        alone = max(runs[0].answers)
        print(
            f"  1 call alone: answers {', '.join(f'{a:.2f}' for a in runs[0].answers)} s; "
            f"cores: Flow {cores[0]:.2f}, callers {cores[1]:.2f}"
        )
        best = 1
        for n in levels:
            runs, cores, problems = await level(n, twilio, sb, openai, proc.pid)
            answers = [a for r in runs for a in r.answers]
            worst = max(answers) if answers else float("inf")
            ratio = worst / alone
            ok = not problems and ratio <= slack
            print(
                f"{n:>3} calls: slowest answer {worst:.2f} s ({ratio:.2f}x alone), median "
                f"{statistics.median(answers) if answers else float('nan'):.2f} s; cores: Flow "
                f"{cores[0]:.2f}, callers {cores[1]:.2f}; ledgers "
                f"{'exact' if not problems else problems[:3]}"
                f" -> {'real time' if ok else 'NOT real time'}"
            )
            if not ok:
                break
            best = n
        print(f"concurrent phone calls in real time on {os.cpu_count()} cores: {best}")
        return 0
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        await fake_twilio.stop()
        await openai.stop()
        localstack.destroy(state)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="4,8,12,16", help="concurrent calls, in order")
    parser.add_argument(
        "--slack", type=float, default=1.5, help="slowest answer allowed, times a lone call's"
    )
    args = parser.parse_args()
    levels = [int(n) for n in args.levels.split(",") if n]
    return asyncio.run(run(levels, args.slack))


if __name__ == "__main__":
    sys.exit(main())
