"""A caller on WebRTC, in pure Python (aiortc): it plays recordings into the call, in real
time, and listens to the bot.

Its microphone (:class:`Microphone`) sends 20 ms frames of 16 kHz mono PCM, paced by the
clock: the recordings queued with :meth:`Caller.say`, silence in between. What the bot
sends back is measured (:class:`Ear`): how many seconds of it were not silence, and
when the bot last made a sound. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
import wave
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

RECORDINGS = Path(__file__).resolve().parents[1] / "recordings"


def read_recording(name: str) -> bytes:
    """A recording's PCM (16 kHz mono s16)."""
    with wave.open(str(RECORDINGS / f"{name}.wav")) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (RATE, 1, 2)
        return wav.readframes(wav.getnframes())


class Microphone(MediaStreamTrack):
    """Queued PCM, then silence, 20 ms a frame, in real time."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pending = bytearray()
        self._done: list[tuple[int, asyncio.Future[None]]] = []
        self._sent = 0  # frames
        self._played = 0  # bytes of queued audio sent
        self._queued = 0  # bytes of audio ever queued
        self._start: float | None = None

    def play(self, pcm: bytes) -> asyncio.Future[None]:
        """Queue ``pcm``; the future is done when its last frame has been sent."""
        pad = (-len(pcm)) % (FRAME_SAMPLES * 2)
        self._pending += pcm + bytes(pad)
        self._queued += len(pcm) + pad
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._done.append((self._queued, done))
        return done

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._sent * FRAME_SECONDS - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
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
        while self._done and self._done[0][0] <= self._played:
            _, done = self._done.pop(0)
            if not done.done():
                done.set_result(None)
        return frame


class Ear:
    """Reads the bot's track; counts the seconds that were not silence."""

    def __init__(self) -> None:
        self.voiced_seconds = 0.0
        self.heard_seconds = 0.0
        self.last_voiced: float | None = None
        self._task: asyncio.Task[None] | None = None

    def listen(self, track: MediaStreamTrack) -> None:
        self._task = asyncio.ensure_future(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            samples = frame.to_ndarray().astype(np.float64)
            seconds = frame.samples / frame.sample_rate
            self.heard_seconds += seconds
            if samples.size and float(np.sqrt(np.mean(samples**2))) > VOICED_RMS:
                self.voiced_seconds += seconds
                self.last_voiced = time.monotonic()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class Caller:
    """One caller: offer, answer, talk, listen, hang up."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection()
        self.microphone = Microphone()
        self.ear = Ear()
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

    async def say(self, recording: str, wait_seconds: float = 30.0) -> None:
        """Play a recording into the call; returns when it has all been sent."""
        await asyncio.wait_for(self.microphone.play(read_recording(recording)), wait_seconds)

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

    async def hang_up(self) -> None:
        await self.ear.stop()
        await self.pc.close()
