"""What the real-audio benchmarks share: callers that talk to a bot over WebRTC and
measure what they hear, the fake vendors, the local stack, and the ledger check.

- :class:`BenchEar` listens like the demo's caller and also counts **dropouts**: a gap
  of silence of 5 ms or more inside the bot's speech (the fake TTS speaks a continuous
  tone, so any gap means the bot's audio did not reach the transport in time), and how
  **late** the bot's speech arrived against the audio's own timeline (a player's jitter
  buffer holds about 100 ms; silence that arrives late is not heard).
- :func:`converse` says the tests' recordings in turn, hearing each reply, for a given
  time; :func:`run_callers` runs several callers at once against a voice server
  (``bench/voice_server.py``); ``python bench/voice.py callers ...`` does it in a
  process of its own and prints the results as JSON.
- :func:`ledger_problems` compares the ledger of some calls with what the fake vendor
  received and served, event for event.

Nothing here times anything against a target; the benchmarks do.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import av
import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.processes import free_port, process
from flow import localstack
from flow.db.keys import hash_key, new_key_secret
from flow.demo.caller import Caller, Ear, read_wav
from tests.fakes.openai_server import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]
RECORDINGS = ROOT / "tests" / "recordings"
SERVER = ROOT / "bench" / "voice_server.py"
LINES = ("order_status", "thank_you")
REPLY = "Your order ships tomorrow morning."
# A quiet stretch this long inside the bot's speech is a dropout; one this long or
# longer is the pause between replies.
DROPOUT_SECONDS, PAUSE_SECONDS = 0.005, 0.3
LOUD_SAMPLE = 1000
LATE_SECONDS = 0.15  # audio later than this behind the bot's own timeline is an underrun
REPLY_WAIT_SECONDS = 20.0


def settings_env(vendor_url: str, spool_dir: Path) -> dict[str, str]:
    """The bot's settings for real audio on this machine: the fake vendors, no greeting
    (the caller speaks first), deterministic VAD and turn ends, loopback candidates."""
    return {
        "OPENAI_API_KEY": "sk-bench",
        "OPENAI_BASE_URL": vendor_url,
        "DEEPGRAM_API_KEY": "",
        "FLOW_TTS_PROVIDER": "openai",
        "FLOW_GREETING": "",
        "FLOW_VAD_STOP_SECS": "0.5",
        "FLOW_TURN_STOP": "timeout",
        "FLOW_WEBRTC_LOOPBACK": "true",
        "FLOW_SPOOL_DIR": str(spool_dir),
        "FLOW_ENV": "development",
        "FLOW_LOG_LEVEL": "ERROR",
        "FLOW_SYNC_ENABLED": "false",
        "FLOW_MAX_BOTS": "64",
        "POSTHOG_API_KEY": "",
        "UNKEY_ROOT_KEY": "",
    }


def vendor() -> FakeOpenAI:
    """The fake OpenAI: transcribes every segment the same, answers one sentence (one
    TTS request a reply), and speaks it as a tone."""
    return FakeOpenAI(replies=[REPLY], transcripts=["Where is my order?"], speech_tone_hz=400)


class BenchEar(Ear):
    """An :class:`Ear` that also counts dropouts and measures lateness."""

    def __init__(self) -> None:
        super().__init__()
        self.dropouts = 0
        self.late_seconds = 0.0
        self._quiet = 1 << 30  # samples since the last loud one (none yet)
        self._offset: float | None = None  # least (arrival - media time) seen

    def heard(self, frame: av.AudioFrame, now: float) -> None:
        voiced_before = self.voiced_seconds
        super().heard(frame, now)
        if frame.pts is not None and frame.time_base is not None:
            offset = now - float(frame.pts * frame.time_base)
            if self._offset is None or offset < self._offset:
                self._offset = offset
            if self.voiced_seconds > voiced_before:  # late silence is not heard
                self.late_seconds = max(self.late_seconds, offset - self._offset)
        channels = len(frame.layout.channels)
        samples = frame.to_ndarray().reshape(-1)[::channels]
        loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > LOUD_SAMPLE)
        if loud.size == 0:
            self._quiet += samples.size
            return
        gaps = np.diff(np.concatenate(([-1 - self._quiet], loud))) - 1
        rate = frame.sample_rate
        self.dropouts += int(
            np.count_nonzero((gaps >= DROPOUT_SECONDS * rate) & (gaps < PAUSE_SECONDS * rate))
        )
        self._quiet = samples.size - 1 - int(loud[-1])


@dataclass
class CallerResult:
    """What one caller measured. Latencies in seconds, None for a turn not answered."""

    thread_id: str = ""
    latencies: list[float | None] = field(default_factory=list)
    reply_seconds: float = 0.0
    dropouts: int = 0
    late_seconds: float = 0.0
    microphone_late_seconds: float = 0.0
    seconds: float = 0.0
    error: str | None = None

    def summary(self) -> str:
        unanswered = self.latencies.count(None) + (not self.latencies)
        return (
            f"call {self.thread_id or '?'}: {self.error or 'no error'}, {unanswered} "
            f"unanswered, dropouts {self.dropouts}, late {self.late_seconds * 1000:.0f} ms, "
            f"caller's microphone late {self.microphone_late_seconds * 1000:.0f} ms"
        )

    @property
    def real_time(self) -> bool:
        answered = bool(self.latencies) and None not in self.latencies
        on_time = self.late_seconds < LATE_SECONDS
        return self.error is None and answered and self.dropouts == 0 and on_time


async def converse(caller: Caller, seconds: float, result: CallerResult) -> None:
    """Say the recordings in turn, hearing each reply, until ``seconds`` have passed."""
    lines = [read_wav(RECORDINGS / f"{name}.wav") for name in LINES]
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < seconds:
        try:
            turn = await caller.turn(lines[n % len(lines)], wait_seconds=REPLY_WAIT_SECONDS)
        except TimeoutError:
            result.latencies.append(None)
            return
        result.latencies.append(turn.latency_seconds)
        result.reply_seconds += turn.reply_seconds
        n += 1


async def call(server: str, mode: str, seconds: float) -> CallerResult:
    """One caller: join the voice server's bot, talk for ``seconds``, hang up."""
    from flow.bot.webrtc import use_loopback_candidates

    use_loopback_candidates()
    result = CallerResult()
    ear = BenchEar()
    caller = Caller(ear)
    started = time.monotonic()
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            res = await http.post(
                f"{server}/calls", json={"mode": mode, "offer": await caller.offer()}
            )
            res.raise_for_status()
            result.thread_id = res.json()["id"]
            await caller.accept(res.json()["answer"], wait_seconds=15)
            await converse(caller, seconds, result)
    except Exception as exc:
        result.error = f"{exc.__class__.__name__}: {exc}"
    finally:
        await caller.hang_up()
    result.seconds = time.monotonic() - started
    result.dropouts, result.late_seconds = ear.dropouts, ear.late_seconds
    result.microphone_late_seconds = caller.microphone.late_seconds
    return result


async def run_callers(server: str, mode: str, calls: int, seconds: float) -> list[CallerResult]:
    """``calls`` callers at once (their joins spread over a second)."""

    async def staggered(n: int) -> CallerResult:
        await asyncio.sleep(n / max(calls, 1))
        return await call(server, mode, seconds)

    return list(await asyncio.gather(*(staggered(n) for n in range(calls))))


async def callers_in_processes(
    server: str, mode: str, calls: int, seconds: float, per_process: int
) -> list[CallerResult]:
    """``calls`` callers spread over processes of ``per_process`` callers each, so the
    callers' own work (Opus, SRTP) is not one Python process's."""
    sizes = [per_process] * (calls // per_process) + (
        [calls % per_process] if calls % per_process else []
    )

    async def one_process(n: int) -> list[CallerResult]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "callers",
            server,
            mode,
            str(n),
            str(seconds),
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), seconds + 120)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return [CallerResult(error="the caller process did not finish") for _ in range(n)]
        rows = json.loads(out or b"[]")
        found = [CallerResult(**row) for row in rows]
        return found + [CallerResult(error="the caller process failed")] * (n - len(found))

    groups = await asyncio.gather(*(one_process(n) for n in sizes))
    return [result for group in groups for result in group]


# --- the server and the stack ------------------------------------------------------
@contextlib.contextmanager
def voice_server(
    info: localstack.StackInfo, key_id: str, vendor_url: str, spool_dir: Path, *extra: str
) -> Iterator[str]:
    """``bench/voice_server.py`` in its own process, its bot talking to the fake vendor
    at ``vendor_url``; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [str(SERVER), "--port", str(port), "--api-key-id", key_id, *extra]
    with process(argv, {**info.env(), **settings_env(vendor_url, spool_dir)}, f"{url}/cpu"):
        yield url


def add_key(info: localstack.StackInfo) -> tuple[str, str]:
    """A local API key in the stack: (its id, its plaintext)."""
    plaintext = new_key_secret()
    key_id = localstack.psql(
        info,
        "-At",
        "-c",
        "insert into api_keys (name, key_hash, key_prefix) values "
        f"('bench', '{hash_key(plaintext)}', '{plaintext[:14]}') returning id",
    ).split()[0]
    return key_id, plaintext


def ledger_problems(
    info: localstack.StackInfo, thread_ids: list[str], fake: FakeOpenAI, since: dict[str, int]
) -> list[str]:
    """What differs between the calls' ledger rows and what the fake vendor received
    and served since ``since`` (its record counts before the calls): each STT event
    must be one WAV's exact duration (to the millisecond), each LLM event one
    completion's usage, each TTS event one request's characters; nothing estimated."""
    if not thread_ids:
        return []
    ids = ",".join(f"'{t}'" for t in thread_ids)
    out = localstack.psql(
        info,
        "-At",
        "-F",
        "|",
        "-c",
        "select kind, audio_seconds, input_tokens, output_tokens, characters, estimated "
        f"from usage_events where workflow_thread_id in ({ids})",
    )
    rows = [line.split("|") for line in out.splitlines() if line]
    ms = Decimal("0.001")
    metered = {
        "stt": sorted(Decimal(r[1]) for r in rows if r[0] == "stt"),
        "llm": sorted((int(r[2]), int(r[3])) for r in rows if r[0] == "llm"),
        "tts": sorted(int(r[4]) for r in rows if r[0] == "tts"),
    }
    vendor_side = {
        "stt": sorted(u.seconds.quantize(ms, ROUND_HALF_UP) for u in fake.uploads[since["stt"] :]),
        "llm": sorted(
            (s.usage.prompt_tokens, s.usage.completion_tokens)
            for s in fake.served[since["llm"] :]
            if s.usage_sent
        ),
        "tts": sorted(len(s.text) for s in fake.speech[since["tts"] :]),
    }
    problems = [
        f"{kind}: ledger {len(metered[kind])} events, vendor {len(vendor_side[kind])}"
        for kind in metered
        if metered[kind] != vendor_side[kind]
    ]
    estimated = sum(r[5] == "t" for r in rows)
    if estimated:
        problems.append(f"{estimated} estimated events")
    return problems


def counts(fake: FakeOpenAI) -> dict[str, int]:
    return {"stt": len(fake.uploads), "llm": len(fake.served), "tts": len(fake.speech)}


def start_stack() -> tuple[Path, localstack.StackInfo]:
    import tempfile

    state = Path(tempfile.mkdtemp(prefix="flow-bench-voice-"))
    return state, localstack.up(state, fixed_ports=False, quiet=True)


def _callers_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("server")
    parser.add_argument("mode")
    parser.add_argument("calls", type=int)
    parser.add_argument("seconds", type=float)
    args = parser.parse_args(argv)
    from loguru import logger

    logger.remove()
    results = asyncio.run(run_callers(args.server, args.mode, args.calls, args.seconds))
    print(json.dumps([asdict(r) for r in results]))


if __name__ == "__main__":
    if sys.argv[1:2] == ["callers"]:
        _callers_main(sys.argv[2:])
    else:
        sys.exit("usage: bench/voice.py callers SERVER MODE CALLS SECONDS")
