"""Twilio's side of a phone call, emulated in Python: what Twilio sends Flow and how.

- :class:`Twilio` signs and POSTs webhooks (``X-Twilio-Signature``, with the official
  SDK's ``RequestValidator``) to Flow: an incoming call's Voice webhook, status callbacks.
- :class:`MediaStream` plays the Media Stream of one call over a websocket, as Twilio
  does after ``<Connect><Stream>``: ``connected``, ``start`` (with the TwiML's
  ``<Parameter>``s as ``customParameters``), then ``media`` every 20 ms (160 bytes of
  8 kHz mu-law: the recordings queued with :meth:`MediaStream.say`, silence between
  them), and ``stop``. It listens to what Flow sends back: the bot's ``media`` (decoded,
  to tell speech from silence) and ``clear``.

Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

RATE = 8_000
FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law
FRAME_SECONDS = FRAME_BYTES / RATE
SILENCE = b"\xff" * FRAME_BYTES  # mu-law zero
VOICED_RMS = 500.0
RECORDINGS = Path(__file__).resolve().parents[1] / "recordings"


def recording(name: str) -> bytes:
    """A recording as a phone carries it: 8 kHz mu-law."""
    return (RECORDINGS / f"{name}.ulaw").read_bytes()


def ulaw_to_pcm(data: bytes) -> np.ndarray:
    """G.711 mu-law to 16-bit linear samples."""
    u = ~np.frombuffer(data, dtype=np.uint8)
    sign, exponent, mantissa = u & 0x80, (u >> 4) & 0x07, u & 0x0F
    magnitude = ((mantissa.astype(np.int32) << 3) + 0x84) << exponent
    return np.where(sign != 0, 0x84 - magnitude, magnitude - 0x84)


def new_sid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


@dataclass
class Twilio:
    """Twilio's account, calling Flow's webhooks.

    Parameters:
        flow_url: where Flow listens (also its public URL: what is signed).
        auth_token: the account's auth token.
        account_sid: the account.
    """

    flow_url: str
    auth_token: str
    account_sid: str

    async def post(
        self, path: str, params: dict[str, str], *, signature: str | None = None
    ) -> httpx.Response:
        """POST a webhook, signed unless ``signature`` is given ("" sends none)."""
        url = self.flow_url + path
        if signature is None:
            signature = RequestValidator(self.auth_token).compute_signature(url, params)
        headers = {"X-Twilio-Signature": signature} if signature else {}
        async with httpx.AsyncClient(timeout=30) as client:
            return await client.post(url, data=params, headers=headers)

    async def incoming_call(
        self, to: str, caller: str, *, signature: str | None = None
    ) -> tuple[str, httpx.Response]:
        """A call to ``to``: the Voice webhook. Returns the call SID and Flow's answer."""
        call_sid = new_sid("CA")
        params = {
            "AccountSid": self.account_sid,
            "CallSid": call_sid,
            "From": caller,
            "To": to,
            "CallStatus": "ringing",
            "Direction": "inbound",
            "ApiVersion": "2010-04-01",
        }
        res = await self.post("/api/telephony/twilio/voice", params, signature=signature)
        return call_sid, res

    async def status(self, call_sid: str, status: str) -> httpx.Response:
        params = {"AccountSid": self.account_sid, "CallSid": call_sid, "CallStatus": status}
        return await self.post("/api/telephony/twilio/status", params)


def stream_of(twiml: str) -> tuple[str, dict[str, str]]:
    """The ``<Connect><Stream>`` of a TwiML answer: its URL and parameters."""
    stream = ET.fromstring(twiml).find("./Connect/Stream")
    assert stream is not None, twiml
    params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
    return stream.attrib["url"], params


class MediaStream:
    """One call's Media Stream, from Twilio's side."""

    def __init__(self, url: str, call_sid: str, account_sid: str) -> None:
        self.url = url
        self.call_sid = call_sid
        self.account_sid = account_sid
        self.stream_sid = new_sid("MZ")
        self.ws: ClientConnection | None = None
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self.closed_by_flow: int | None = None  # the close code, when Flow closed it
        self.heard_seconds = 0.0
        self.voiced_seconds = 0.0
        self.last_voiced: float | None = None
        self.clears: list[float] = []  # when each clear arrived
        self.voiced_before_clear: list[float] = []  # bot speech heard before each clear
        self._pending = bytearray()
        self._played = 0
        self._queued = 0
        self._done: list[tuple[int, asyncio.Future[None]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._seq = 0

    def _next(self) -> str:
        self._seq += 1
        return str(self._seq)

    async def start(self, parameters: dict[str, str], *, call_sid: str | None = None) -> None:
        """Open the socket, send ``connected`` and ``start``, start sending media."""
        self.ws = await asyncio.wait_for(connect(self.url, max_size=None), 10)
        await self.ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1"}))
        start = {
            "accountSid": self.account_sid,
            "streamSid": self.stream_sid,
            "callSid": call_sid or self.call_sid,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": RATE, "channels": 1},
            "customParameters": parameters,
        }
        await self.ws.send(
            json.dumps(
                {
                    "event": "start",
                    "sequenceNumber": self._next(),
                    "start": start,
                    "streamSid": self.stream_sid,
                }
            )
        )
        self.started_at = time.monotonic()
        self._tasks = [
            asyncio.ensure_future(self._send_media()),
            asyncio.ensure_future(self._listen()),
        ]

    async def _send_media(self) -> None:
        assert self.ws is not None and self.started_at is not None
        chunk = 0
        while True:
            wait = self.started_at + chunk * FRAME_SECONDS - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if self._pending:
                payload = bytes(self._pending[:FRAME_BYTES])
                del self._pending[:FRAME_BYTES]
                self._played += FRAME_BYTES
            else:
                payload = SILENCE
            media = {
                "track": "inbound",
                "chunk": str(chunk + 1),
                "timestamp": str(chunk * 20),
                "payload": base64.b64encode(payload).decode(),
            }
            message = {
                "event": "media",
                "sequenceNumber": self._next(),
                "media": media,
                "streamSid": self.stream_sid,
            }
            try:
                await self.ws.send(json.dumps(message))
            except ConnectionClosed:
                return
            chunk += 1
            while self._done and self._done[0][0] <= self._played:
                _, done = self._done.pop(0)
                if not done.done():
                    done.set_result(None)

    async def _listen(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                message: dict[str, Any] = json.loads(raw)
                if message.get("streamSid") != self.stream_sid:
                    continue
                if message.get("event") == "media":
                    audio = base64.b64decode(message["media"]["payload"])
                    seconds = len(audio) / RATE
                    self.heard_seconds += seconds
                    samples = ulaw_to_pcm(audio).astype(np.float64)
                    if samples.size and float(np.sqrt(np.mean(samples**2))) > VOICED_RMS:
                        self.voiced_seconds += seconds
                        self.last_voiced = time.monotonic()
                elif message.get("event") == "clear":
                    self.clears.append(time.monotonic())
                    self.voiced_before_clear.append(self.voiced_seconds)
        except ConnectionClosed as closed:
            if self.stopped_at is None and closed.rcvd is not None:
                self.closed_by_flow = closed.rcvd.code
        if self.stopped_at is None and self.closed_by_flow is None and self.ws.close_code:
            self.closed_by_flow = self.ws.close_code

    def play(self, audio: bytes) -> asyncio.Future[None]:
        pad = (-len(audio)) % FRAME_BYTES
        self._pending += audio + b"\xff" * pad
        self._queued += len(audio) + pad
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._done.append((self._queued, done))
        return done

    async def say(self, name: str, wait_seconds: float = 30.0) -> None:
        """Play a recording into the call; returns once it has all been sent."""
        await asyncio.wait_for(self.play(recording(name)), wait_seconds)

    async def hear_speech(self, wait_seconds: float = 30.0) -> None:
        """Wait until the bot makes a sound."""
        before = self.voiced_seconds
        deadline = time.monotonic() + wait_seconds
        while self.voiced_seconds == before:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the bot said nothing within {wait_seconds} s")
            await asyncio.sleep(0.02)

    async def hear_reply(self, *, quiet: float = 1.0, wait_seconds: float = 30.0) -> float:
        """Wait for the bot to speak, then to be quiet for ``quiet`` seconds; returns the
        seconds of sound heard meanwhile."""
        before = self.voiced_seconds
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            last = self.last_voiced
            if self.voiced_seconds > before and last and time.monotonic() - last >= quiet:
                return self.voiced_seconds - before
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no complete reply from the bot within {wait_seconds} s")

    async def quiet(self, seconds: float = 1.0, wait_seconds: float = 30.0) -> None:
        """Wait until the bot has said nothing for ``seconds``."""
        deadline = time.monotonic() + wait_seconds
        while self.last_voiced is not None and time.monotonic() - self.last_voiced < seconds:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the bot did not stop talking within {wait_seconds} s")
            await asyncio.sleep(0.05)

    async def closed(self, wait_seconds: float = 10.0) -> int | None:
        """Wait until Flow closes the socket; its close code."""
        assert self.ws is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ws.wait_closed(), wait_seconds)
        await self._stop_tasks()
        return self.ws.close_code

    async def stop(self) -> None:
        """The caller hangs up: ``stop``, then Twilio closes the socket."""
        assert self.ws is not None
        self.stopped_at = time.monotonic()
        stop = {"accountSid": self.account_sid, "callSid": self.call_sid}
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(
                json.dumps(
                    {
                        "event": "stop",
                        "sequenceNumber": self._next(),
                        "stop": stop,
                        "streamSid": self.stream_sid,
                    }
                )
            )
        await self._stop_tasks()
        await self.ws.close()

    async def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
