"""The demo's call over real audio: a caller says a recorded line to the bot over WebRTC.

The caller (:mod:`flow.demo.caller`, in the demo's process) joins through the real
``POST /api/bot/join`` with ``"transport": "webrtc"`` and its SDP offer, plays
``speech/where_is_my_order.wav`` (shipped with the package; ``speech/make.sh`` made it
with espeak-ng) into the call in real time, hears the bot's spoken reply, and hangs up,
which ends the call gracefully. On the way the audio goes through Silero VAD and the
STT service, so the demo's report can set the STT seconds the ledger holds for the call
beside the seconds the caller spoke.

Every wait is bounded: a peer that does not connect within ``CONNECT_SECONDS`` fails the
demo; a bot that does not answer within ``REPLY_SECONDS`` (offline, espeak-ng missing:
its speech is silence) is reported as such, and the caller hangs up all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from flow.demo.caller import Caller, Turn, read_wav, voice_seconds

SPEECH = Path(__file__).resolve().parent / "speech" / "where_is_my_order.wav"
SPEECH_TEXT = "Hi, where is my order?"
END_USER = "caller-hedy"
CONNECT_SECONDS = 10.0
REPLY_SECONDS = 30.0


@dataclass
class VoiceCall:
    """A joined call over real audio and its caller's conversation.

    Parameters:
        thread_id: the call.
        spoken_seconds: the seconds of voice in the line the caller says.
        talking: the conversation; its result is the turn, or None when the bot did
            not answer in time.
    """

    thread_id: str
    spoken_seconds: float
    talking: asyncio.Task[Turn | None] = field(repr=False)

    async def turn(self, wait_seconds: float = REPLY_SECONDS + 5) -> Turn | None:
        """The caller's turn, once it is over (None when the bot did not answer)."""
        done, _ = await asyncio.wait([self.talking], timeout=wait_seconds)
        if not done:
            self.talking.cancel()
            return None
        with contextlib.suppress(Exception):
            return self.talking.result()
        return None

    async def report(self, rows: list[dict[str, Any]]) -> list[str]:
        """Lines for the demo's report: what was said, what the STT meter billed, and
        what the caller heard."""
        stt = [Decimal(r["audio_seconds"]) for r in rows if r["kind"] == "stt"]
        lines = [
            f'real audio over WebRTC: the caller said "{SPEECH_TEXT}" '
            f"({self.spoken_seconds:.2f} s of voice)",
            f"STT metered {sum(stt, Decimal(0))} s in {len(stt)} segment(s): the audio the STT "
            "vendor received (lead-in, speech, the silence that ended it, 0.5 s of padding)",
        ]
        turn = await self.turn()
        if turn is None:
            lines.append("the caller heard no reply (offline, the bot speaks with espeak-ng)")
            return lines
        heard = f"the caller heard {turn.reply_seconds:.1f} s of the bot's voice"
        if turn.latency_seconds is not None:
            heard += (
                f", its first sound {turn.latency_seconds * 1000:.0f} ms after the caller "
                "stopped speaking"
            )
        return [*lines, heard]


async def join_voice_call(http: httpx.AsyncClient) -> VoiceCall:
    """Join the call (the caller's peer is up when this returns) and start talking."""
    from flow.bot.webrtc import use_loopback_candidates

    # The demo's API offers loopback candidates (FLOW_WEBRTC_LOOPBACK): so does its caller.
    use_loopback_candidates()
    pcm = read_wav(SPEECH)
    caller = Caller()
    try:
        resp = await http.post(
            "/api/bot/join",
            json={
                "transport": "webrtc",
                "webrtc_offer": await caller.offer(),
                # The caller speaks first: a greeting would talk over it.
                "bot_config": {"greeting": ""},
                "process_insights": True,
            },
            headers={"X-Flow-User": END_USER},
        )
        if resp.status_code != 202:
            raise RuntimeError(f"join failed: {resp.status_code} {resp.text}")
        body = resp.json()
        try:
            await caller.accept(body["webrtc_answer"], CONNECT_SECONDS)
        except TimeoutError:
            raise RuntimeError(
                f"the demo's caller did not connect over WebRTC within {CONNECT_SECONDS:g} s"
            ) from None
    except BaseException:
        await caller.hang_up()
        raise
    talking = asyncio.create_task(_talk(caller, pcm), name="demo-voice-caller")
    return VoiceCall(str(body["workflow_thread_id"]), voice_seconds(pcm), talking)


async def _talk(caller: Caller, pcm: bytes) -> Turn | None:
    """Say the line, hear the reply, hang up (which ends the call)."""
    try:
        return await caller.turn(pcm, wait_seconds=REPLY_SECONDS)
    except TimeoutError:
        return None
    finally:
        await caller.hang_up()
