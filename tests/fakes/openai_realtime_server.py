"""A local fake of OpenAI's Realtime websocket (GA event names), for tests.

``ws://127.0.0.1:PORT/v1/realtime?model=...`` speaks the protocol Pipecat's
``OpenAIRealtimeLLMService`` drives: ``session.created`` on connect, ``session.updated``
for each ``session.update``, ``conversation.item.added`` for each item the client
creates, a response for each ``response.create``, and server-side turn detection on the
audio the client appends (``input_audio_buffer.append``, PCM16 at 24 kHz).

Turn detection reads the audio itself, like OpenAI's ``server_vad``: 10 ms windows whose
RMS exceeds ``speech_rms`` are speech; ``silence_ms`` of quiet after speech end the turn.
Times are audio time (milliseconds of audio received), so a burst of audio appended at
once is heard the same as audio in real time. A turn then goes like OpenAI's:
``input_audio_buffer.speech_started`` / ``speech_stopped`` (``audio_start_ms`` /
``audio_end_ms``), ``input_audio_buffer.committed``, the user item,
``conversation.item.input_audio_transcription.completed`` with the next of
``transcripts`` and the transcription's own ``usage`` (``{"type": "duration", "seconds"}``
for ``whisper-1``, ``{"type": "tokens", ...}`` for the other models), then a response.

A response streams its reply word by word (``response.output_audio_transcript.delta`` and
``response.output_audio.delta``, a short tone each), slowly for the responses numbered
in ``slow_replies``, and ends with ``response.done`` carrying ``usage``. Speech that
starts while a response runs cancels it (as ``interrupt_response`` does): its
``response.done`` has status ``cancelled`` and still carries ``usage``, as OpenAI's does.
A ``response.create`` with ``conversation: "none"`` is out of band: its item is not added
to the conversation, and when its instructions end with ``...and nothing else: WORDS`` it
says WORDS. A ``session.update`` setting ``audio.input.turn_detection`` to null turns turn
detection off: audio is then heard but starts no turn.

Usage numbers are known per response (``usage_for``) and per transcription
(``transcription_usage_for``); every response and transcription served is recorded with
exactly what was sent, so a test can compute what the ledger must hold.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import math
import struct
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.loopback import serve_on_loopback

RATE = 24_000
WINDOW_BYTES = 2 * RATE // 100  # 10 ms of PCM16 mono
# How an instruction to say words verbatim ends (out-of-band responses say what follows).
SAY_EXACTLY = "and nothing else: "
WORD_AUDIO = struct.pack(
    "<2400h", *(round(6000 * math.sin(2 * math.pi * 300 * i / RATE)) for i in range(2400))
)  # 0.1 s of a 300 Hz tone


@dataclass(frozen=True)
class ResponseUsage:
    """A response's tokens, by part, as OpenAI's ``usage`` details them."""

    text_in: int
    audio_in: int
    cached_text: int
    cached_audio: int
    text_out: int
    audio_out: int

    @property
    def input_tokens(self) -> int:
        return self.text_in + self.audio_in

    @property
    def output_tokens(self) -> int:
        return self.text_out + self.audio_out

    def to_json(self) -> dict[str, Any]:
        return {
            "total_tokens": self.input_tokens + self.output_tokens,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "input_token_details": {
                "text_tokens": self.text_in,
                "audio_tokens": self.audio_in,
                "image_tokens": 0,
                "cached_tokens": self.cached_text + self.cached_audio,
                "cached_tokens_details": {
                    "text_tokens": self.cached_text,
                    "audio_tokens": self.cached_audio,
                    "image_tokens": 0,
                },
            },
            "output_token_details": {"text_tokens": self.text_out, "audio_tokens": self.audio_out},
        }


@dataclass
class ServedResponse:
    id: str
    reply: str
    usage: ResponseUsage | None = None
    status: str = "in_progress"
    words_sent: int = 0
    item_id: str = ""
    out_of_band: bool = False  # conversation "none": said, not added to the conversation
    instructions: str | None = None


@dataclass
class ServedTranscription:
    item_id: str
    model: str
    transcript: str
    seconds: Decimal
    usage: dict[str, Any]


@dataclass
class FakeRealtime:
    """The server's behaviour and what it served; change fields between calls.

    Parameters:
        replies: the responses' words in order (the last one repeats).
        transcripts: what each caller turn is transcribed as (the last one repeats).
        slow_replies: numbers (0-based) of responses streamed slowly, to be talked over.
        word_seconds: the delay before each word of a slow response.
    """

    replies: list[str] = field(default_factory=lambda: ["Sure, happy to help."])
    transcripts: list[str] = field(default_factory=lambda: ["Hello."])
    slow_replies: set[int] = field(default_factory=set)
    word_seconds: float = 0.15
    speech_rms: float = 500.0
    silence_ms: int = 500
    responses: list[ServedResponse] = field(default_factory=list)
    transcriptions: list[ServedTranscription] = field(default_factory=list)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)
    audio_bytes: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None
    _ids: Any = field(default_factory=itertools.count)

    def usage_for(self, n: int, status: str) -> ResponseUsage:
        """Distinct numbers per response; every part within its total. A cancelled
        response generated less, and is billed for what it generated."""
        text_out, audio_out = (4, 25) if status == "cancelled" else (15 + n, 120 + 30 * n)
        return ResponseUsage(
            text_in=200 + 10 * n,
            audio_in=100 * n,
            cached_text=64 if n else 0,
            cached_audio=50 * (n - 1) if n > 1 else 0,
            text_out=text_out,
            audio_out=audio_out,
        )

    def transcription_usage_for(self, n: int, model: str, seconds: Decimal) -> dict[str, Any]:
        if model == "whisper-1":
            return {"type": "duration", "seconds": float(seconds)}
        audio, text, out = 40 + 3 * n, 5, 6 + n
        return {
            "type": "tokens",
            "total_tokens": audio + text + out,
            "input_tokens": audio + text,
            "input_token_details": {"text_tokens": text, "audio_tokens": audio},
            "output_tokens": out,
        }

    @property
    def url(self) -> str:
        """What ``OPENAI_REALTIME_BASE_URL`` takes (Pipecat appends ``?model=``)."""
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    def next_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):05d}"

    async def start(self) -> FakeRealtime:
        app = web.Application()
        app.router.add_get("/v1/realtime", self._session)
        self._runner, self.port = await serve_on_loopback(app)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _session(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        self.models.append(request.query.get("model", ""))
        session = _Session(self, ws, request.query.get("model", ""))
        try:
            await session.run()
        finally:
            await session.close()
        return ws


class _Session:
    """One websocket session: its config, its turn detection, its running response."""

    def __init__(self, fake: FakeRealtime, ws: web.WebSocketResponse, model: str) -> None:
        self.fake = fake
        self.ws = ws
        self.model = model
        self.config: dict[str, Any] = {}
        self.pending = b""
        self.ms = 0  # audio time
        self.speech_item: str | None = None
        self.speech_start_ms = 0
        self.quiet_ms = 0
        self.last_item: str | None = None
        self.response: ServedResponse | None = None
        self.task: asyncio.Task[None] | None = None

    async def send(self, kind: str, **fields: Any) -> None:
        await self.ws.send_str(
            json.dumps({"event_id": self.fake.next_id("event"), "type": kind, **fields})
        )

    async def run(self) -> None:
        sid = self.fake.next_id("sess")
        await self.send(
            "session.created", session={"type": "realtime", "id": sid, "model": self.model}
        )
        async for msg in self.ws:
            if msg.type != WSMsgType.TEXT:
                break
            event = json.loads(msg.data)
            kind = event.get("type")
            if kind == "session.update":
                self.config.update(event.get("session") or {})
                self.fake.sessions.append(event.get("session") or {})
                await self.send(
                    "session.updated",
                    session={"type": "realtime", "id": sid, "model": self.model},
                )
            elif kind == "conversation.item.create":
                item = {"id": self.fake.next_id("item"), **event["item"], "status": "completed"}
                self.fake.items.append(item)
                await self._add_item(item)
            elif kind == "response.create":
                await self._respond(event.get("response") or {})
            elif kind == "response.cancel":
                await self._cancel()
            elif kind == "input_audio_buffer.append":
                await self._hear(base64.b64decode(event["audio"]))
            elif kind == "conversation.item.truncate":
                await self.send(
                    "conversation.item.truncated",
                    item_id=event["item_id"],
                    content_index=event.get("content_index", 0),
                    audio_end_ms=event.get("audio_end_ms", 0),
                )

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def _add_item(self, item: dict[str, Any]) -> None:
        await self.send("conversation.item.added", previous_item_id=self.last_item, item=item)
        self.last_item = item["id"]

    # --- turn detection ---------------------------------------------------------
    async def _hear(self, audio: bytes) -> None:
        self.fake.audio_bytes += len(audio)
        data = self.pending + audio
        whole = len(data) - len(data) % WINDOW_BYTES
        self.pending = data[whole:]
        for start in range(0, whole, WINDOW_BYTES):
            samples = struct.unpack(f"<{WINDOW_BYTES // 2}h", data[start : start + WINDOW_BYTES])
            loud = math.sqrt(sum(s * s for s in samples) / len(samples)) > self.fake.speech_rms
            await self._window(loud)
            self.ms += 10

    def _detects_turns(self) -> bool:
        """Server VAD is on unless the session set ``turn_detection`` to null."""
        audio_input = (self.config.get("audio") or {}).get("input") or {}
        return not ("turn_detection" in audio_input and audio_input["turn_detection"] is None)

    async def _window(self, loud: bool) -> None:
        if not self._detects_turns():
            return
        if loud:
            self.quiet_ms = 0
            if self.speech_item is None:
                self.speech_item = self.fake.next_id("item")
                self.speech_start_ms = self.ms
                await self.send(
                    "input_audio_buffer.speech_started",
                    audio_start_ms=self.ms,
                    item_id=self.speech_item,
                )
                await self._cancel()
        elif self.speech_item is not None:
            self.quiet_ms += 10
            if self.quiet_ms >= self.fake.silence_ms:
                await self._turn_ended(self.ms + 10)

    async def _turn_ended(self, end_ms: int) -> None:
        item_id, self.speech_item = self.speech_item, None
        assert item_id is not None
        await self.send("input_audio_buffer.speech_stopped", audio_end_ms=end_ms, item_id=item_id)
        await self.send(
            "input_audio_buffer.committed", previous_item_id=self.last_item, item_id=item_id
        )
        content = [{"type": "input_audio", "transcript": None}]
        await self._add_item({"id": item_id, "type": "message", "role": "user", "content": content})
        transcription = ((self.config.get("audio") or {}).get("input") or {}).get("transcription")
        if transcription:
            n = len(self.fake.transcriptions)
            model = str(transcription.get("model"))
            seconds = Decimal(end_ms - self.speech_start_ms) / 1000
            served = ServedTranscription(
                item_id=item_id,
                model=model,
                transcript=self.fake.transcripts[min(n, len(self.fake.transcripts) - 1)],
                seconds=seconds,
                usage=self.fake.transcription_usage_for(n, model, seconds),
            )
            self.fake.transcriptions.append(served)
            await self.send(
                "conversation.item.input_audio_transcription.completed",
                item_id=item_id,
                content_index=0,
                transcript=served.transcript,
                usage=served.usage,
            )
        await self._respond()

    # --- responses --------------------------------------------------------------
    async def _respond(self, asked: dict[str, Any] | None = None) -> None:
        await self._cancel()  # one response at a time
        n = len(self.fake.responses)
        reply = self.fake.replies[min(n, len(self.fake.replies) - 1)]
        instructions = (asked or {}).get("instructions")
        out_of_band = (asked or {}).get("conversation") == "none"
        if out_of_band and instructions and SAY_EXACTLY in instructions:
            reply = instructions.split(SAY_EXACTLY, 1)[1]  # a model that does as it is told
        response = ServedResponse(
            id=self.fake.next_id("resp"),
            reply=reply,
            out_of_band=out_of_band,
            instructions=instructions,
        )
        self.fake.responses.append(response)
        self.response = response
        self.task = asyncio.get_running_loop().create_task(self._stream(n, response))

    async def _stream(self, n: int, response: ServedResponse) -> None:
        item_id = response.item_id = self.fake.next_id("item")
        await self.send(
            "response.created",
            response={"id": response.id, "object": "realtime.response", "status": "in_progress"},
        )
        if not response.out_of_band:
            await self._add_item(
                {"id": item_id, "type": "message", "role": "assistant", "status": "in_progress"}
            )
        at = {"response_id": response.id, "item_id": item_id, "output_index": 0, "content_index": 0}
        for i, word in enumerate(response.reply.split(" ")):
            if n in self.fake.slow_replies:
                await asyncio.sleep(self.fake.word_seconds)
            text = word if i == 0 else " " + word
            await self.send("response.output_audio_transcript.delta", **at, delta=text)
            audio = base64.b64encode(WORD_AUDIO).decode()
            await self.send("response.output_audio.delta", **at, delta=audio)
            response.words_sent += 1
        await self.send("response.output_audio.done", **at)
        await self.send("response.output_audio_transcript.done", **at, transcript=response.reply)
        await self._done(n, response, "completed")

    async def _done(self, n: int, response: ServedResponse, status: str) -> None:
        if response.status != "in_progress":
            return
        response.status = status
        item_id = response.item_id
        response.usage = self.fake.usage_for(n, status)
        said = " ".join(response.reply.split(" ")[: response.words_sent])
        item = {
            "id": item_id,
            "type": "message",
            "role": "assistant",
            "status": "completed" if status == "completed" else "incomplete",
            "content": [{"type": "output_audio", "transcript": said}],
        }
        if not response.out_of_band:
            await self.send("conversation.item.done", item=item)
        details = {"type": status, "reason": "turn_detected"} if status == "cancelled" else None
        await self.send(
            "response.done",
            response={
                "id": response.id,
                "object": "realtime.response",
                "status": status,
                "status_details": details,
                "output": [item],
                "usage": response.usage.to_json(),
            },
        )
        if self.response is response:
            self.response = None

    async def _cancel(self) -> None:
        """Cancel the running response: OpenAI still reports (and bills) its usage."""
        response, task = self.response, self.task
        if response is None or task is None or task.done() or response.status != "in_progress":
            return  # nothing runs, or its response.done is already going out
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await self._done(self.fake.responses.index(response), response, "cancelled")
