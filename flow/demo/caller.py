"""A caller on WebRTC, in pure Python (aiortc): it plays recorded speech into a call, in
real time, and listens to the bot.

``flow demo`` calls its bot with it, the voice tests and benchmarks too. Its microphone
(:class:`Microphone`) sends 20 ms frames of 16 kHz mono PCM, paced by the clock: the
speech queued with :meth:`Caller.say`, silence in between. What the bot sends back is
measured (:class:`Ear`): how many seconds of it were not silence, when the bot began
to sound, when it last made a sound. :meth:`Caller.turn` says one line and waits for
the reply: the voice-to-voice latency is the time from the end of the caller's voice
to the bot's first sound at the caller. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

RATE = 16_000
FRAME_SAMPLES = 320  # 20 ms
FRAME_SECONDS = FRAME_SAMPLES / RATE
# A received frame louder than this (RMS of s16 samples) is the bot speaking.
VOICED_RMS = 500.0
# Samples quieter than this end the caller's voice in a recording.
QUIET_SAMPLE = 300


def read_wav(path: Path) -> bytes:
    """A recording's PCM; it must be 16 kHz mono 16-bit."""
    with wave.open(str(path)) as wav:
        found = (wav.getframerate(), wav.getnchannels(), wav.getsampwidth())
        if found != (RATE, 1, 2):
            raise ValueError(f"{path}: {found} (rate, channels, bytes), not 16 kHz mono 16-bit")
        return wav.readframes(wav.getnframes())


def voice_seconds(pcm: bytes) -> float:
    """Seconds from the start of ``pcm`` to its last sample that is not quiet."""
    samples = np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32))
    loud = np.flatnonzero(samples > QUIET_SAMPLE)
    return float(loud[-1] + 1) / RATE if loud.size else 0.0


class Microphone(MediaStreamTrack):
    """Queued PCM, then silence, 20 ms a frame, in real time."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pending = bytearray()
        self._done: list[tuple[int, asyncio.Future[float]]] = []
        self._sent = 0  # frames
        self._played = 0  # bytes of queued audio sent
        self._queued = 0  # bytes of audio ever queued
        self._start: float | None = None
        self.late_seconds = 0.0  # the latest a frame went out (this process was busy)

    def play(self, pcm: bytes) -> asyncio.Future[float]:
        """Queue ``pcm``; the future is done, with the time (``time.monotonic()``) its
        last frame went out, when it has all been sent."""
        pad = (-len(pcm)) % (FRAME_SAMPLES * 2)
        self._pending += pcm + bytes(pad)
        self._queued += len(pcm) + pad
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._done.append((self._queued, done))
        return done

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._sent * FRAME_SECONDS
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        else:
            self.late_seconds = max(self.late_seconds, -wait)
        size = FRAME_SAMPLES * 2
        if self._pending:
            chunk = bytes(self._pending[:size])
            del self._pending[:size]
            self._played += size
        else:
            chunk = bytes(size)
        frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        frame.planes[0].update(chunk)
        frame.sample_rate = RATE
        frame.pts = self._sent * FRAME_SAMPLES
        frame.time_base = fractions.Fraction(1, RATE)
        self._sent += 1
        now = time.monotonic()
        while self._done and self._done[0][0] <= self._played:
            _, done = self._done.pop(0)
            if not done.done():
                done.set_result(now)
        return frame


class Ear:
    """Reads the bot's track: the seconds that were not silence, and when the bot
    began to sound after a silence (``onsets``, ``time.monotonic()``)."""

    def __init__(self) -> None:
        self.voiced_seconds = 0.0
        self.heard_seconds = 0.0
        self.last_voiced: float | None = None
        self.onsets: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def listen(self, track: MediaStreamTrack) -> None:
        self._task = asyncio.ensure_future(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if isinstance(frame, av.AudioFrame):
                self.heard(frame, time.monotonic())

    def heard(self, frame: av.AudioFrame, now: float) -> None:
        """One frame of the bot's audio, received at ``now``."""
        samples = frame.to_ndarray().astype(np.float64)
        seconds = frame.samples / frame.sample_rate
        self.heard_seconds += seconds
        if samples.size and float(np.sqrt(np.mean(samples**2))) > VOICED_RMS:
            if self.last_voiced is None or now - self.last_voiced > 2 * seconds + 0.02:
                self.onsets.append(now)
            self.voiced_seconds += seconds
            self.last_voiced = now

    def first_sound_after(self, moment: float) -> float | None:
        return next((t for t in self.onsets if t >= moment), None)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@dataclass
class Turn:
    """One line said and the bot's reply.

    Parameters:
        spoken_seconds: the seconds of voice in the line said.
        latency_seconds: from the end of the caller's voice to the bot's first sound
            at the caller; None when the bot did not answer in time.
        reply_seconds: the seconds of the bot's reply that were not silence.
    """

    spoken_seconds: float
    latency_seconds: float | None
    reply_seconds: float


class Caller:
    """One caller: offer, answer, talk, listen, hang up.

    Parameters:
        ear: what listens to the bot (an :class:`Ear` by default).
    """

    def __init__(self, ear: Ear | None = None) -> None:
        self.pc = RTCPeerConnection()
        self.microphone = Microphone()
        self.ear = ear or Ear()
        self.pc.addTransceiver(self.microphone, direction="sendrecv")
        self._connected = asyncio.Event()

        @self.pc.on("track")
        def _track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                self.ear.listen(track)

        @self.pc.on("connectionstatechange")
        def _state() -> None:
            if self.pc.connectionState == "connected":
                self._connected.set()

    async def offer(self) -> dict[str, str]:
        """The offer, with every local candidate (gathered by setLocalDescription)."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return {"sdp": self.pc.localDescription.sdp, "type": self.pc.localDescription.type}

    async def accept(self, answer: dict[str, Any], wait_seconds: float = 10.0) -> None:
        """Take the bot's answer and wait until the connection is up."""
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        await asyncio.wait_for(self._connected.wait(), wait_seconds)

    async def say(self, pcm: bytes, wait_seconds: float = 30.0) -> float:
        """Play speech (16 kHz mono s16) into the call; returns, once it has all been
        sent, the time its last frame went out."""
        return await asyncio.wait_for(self.microphone.play(pcm), wait_seconds)

    async def hear_reply(self, *, quiet: float = 1.0, wait_seconds: float = 30.0) -> float:
        """Wait for the bot to speak, then to be quiet for ``quiet`` seconds; returns
        the seconds of sound heard meanwhile."""
        before = self.ear.voiced_seconds
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            last = self.ear.last_voiced
            spoke = self.ear.voiced_seconds > before
            if spoke and last is not None and time.monotonic() - last >= quiet:
                return self.ear.voiced_seconds - before
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no complete reply from the bot within {wait_seconds} s")

    async def turn(self, pcm: bytes, *, quiet: float = 1.0, wait_seconds: float = 30.0) -> Turn:
        """Say ``pcm`` and hear the reply (raises ``TimeoutError`` without one)."""
        sent = await self.say(pcm, wait_seconds)
        spoken = voice_seconds(pcm)
        # The last frame went out at ``sent`` and holds the last 20 ms of the padded PCM.
        padded = -(-len(pcm) // (FRAME_SAMPLES * 2)) * FRAME_SECONDS
        voice_ended = sent + FRAME_SECONDS - (padded - spoken)
        reply = await self.hear_reply(quiet=quiet, wait_seconds=wait_seconds)
        first = self.ear.first_sound_after(voice_ended)
        latency = None if first is None else first - voice_ended
        return Turn(spoken_seconds=spoken, latency_seconds=latency, reply_seconds=reply)

    async def hang_up(self) -> None:
        await self.ear.stop()
        await self.pc.close()
