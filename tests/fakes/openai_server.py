"""A local OpenAI-compatible chat-completions server that streams, for tests.

It speaks the streaming protocol the real ``openai`` client (and so Pipecat's
``OpenAILLMService``) expects: ``POST /v1/chat/completions`` answered with Server-Sent
Events, one ``chat.completion.chunk`` per word, then a last chunk with no choices that
carries ``usage`` (with ``prompt_tokens_details.cached_tokens``), then ``[DONE]``.

Every request is recorded with the usage it was answered with and whether that usage
chunk was actually sent (a client that hangs up mid-stream never receives it), so a
test can compute exactly what the ledger must hold.

``slow_word_seconds`` makes the stream slow, to let a test interrupt a reply. A request
that does not stream (the post-call insights step) is answered with ``json_answer`` as
one ``chat.completion`` with usage, or refused when there is none.

``POST /v1/audio/speech`` answers like OpenAI's TTS with ``response_format: pcm``:
headerless 16-bit mono PCM at 24 kHz (silence, as long as the text would take to say),
sent in chunks; each request is recorded with whether its whole body went out. With
``speech_tone_hz`` the audio is a tone instead of silence, so a caller can hear it.

``POST /v1/audio/transcriptions`` answers like OpenAI's segmented STT: a multipart
upload (``file`` a WAV, ``model``, ``language``) answered with ``{"text": ..., "usage"}``,
the next of ``transcripts`` (the last one repeats). Each upload is recorded with the
exact duration of its audio, read from the WAV's header and data size, and the usage it
was answered with, the way OpenAI bills the model: ``whisper-1`` by the second
(``{"type": "duration", "seconds"}``, whole seconds rounded up), the ``gpt-4o-transcribe``
family by the token (``{"type": "tokens", ...}``: audio tokens in, text tokens out).
``transcription_status`` other than 200 fails every upload with that status.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import struct
import time
import uuid
import wave
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import web

from tests.fakes.loopback import serve_on_loopback


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }


@dataclass
class Served:
    """One request: what it asked, what it was answered, and whether usage got out."""

    messages: list[dict[str, Any]]
    model: str
    reply: str
    usage: Usage
    usage_sent: bool = False
    words_sent: int = 0
    usage_sent_at: float | None = None  # time.monotonic() when the usage chunk went out
    stream: bool = True


@dataclass
class Speech:
    """One TTS request: the text billed (by characters) and whether all audio went out."""

    text: str
    model: str
    body_sent: bool = False
    body_sent_at: float | None = None  # time.monotonic() when the last byte went out


@dataclass
class Upload:
    """One transcription request: the WAV's format, its exact duration, the answer."""

    model: str
    language: str
    sample_rate: int
    channels: int
    sample_width: int
    frames: int
    text: str
    usage: dict[str, Any] | None = None

    @property
    def seconds(self) -> Decimal:
        return Decimal(self.frames) / Decimal(self.sample_rate)


def transcription_usage(model: str, seconds: Decimal, text: str) -> dict[str, Any]:
    """What OpenAI's transcription answers report: seconds for whisper-1, tokens for
    the gpt-4o-transcribe family (about 10 audio tokens a second, a word a token)."""
    if model == "whisper-1":
        return {"type": "duration", "seconds": math.ceil(seconds)}
    audio, out = max(1, round(seconds * 10)), len(text.split()) + 1
    return {
        "type": "tokens",
        "input_tokens": audio,
        "input_token_details": {"text_tokens": 0, "audio_tokens": audio},
        "output_tokens": out,
        "total_tokens": audio + out,
    }


PCM_RATE = 24_000
PCM_BYTES_PER_CHARACTER = PCM_RATE * 2 // 15  # about 15 characters a second of speech
PCM_CHUNK_BYTES = 9_600  # 0.2 s


def tone_chunk(hz: float) -> bytes:
    """0.2 s of a sine at ``hz`` (a whole number of periods when 5*hz is whole)."""
    samples = PCM_CHUNK_BYTES // 2
    return struct.pack(
        f"<{samples}h",
        *(round(8000 * math.sin(2 * math.pi * hz * i / PCM_RATE)) for i in range(samples)),
    )


@dataclass
class FakeOpenAI:
    """The server's behaviour; change the fields between requests as a test needs.

    Parameters:
        replies: replies in order (the last one repeats).
        usage: the usage reported for the n-th request (0-based) given its reply.
        slow_word_seconds: delay before each word (0: as fast as possible).
    """

    replies: list[str] = field(default_factory=lambda: ["Sure, happy to help."])
    slow_word_seconds: float = 0.0
    served: list[Served] = field(default_factory=list)
    speech: list[Speech] = field(default_factory=list)
    speech_chunk_seconds: float = 0.0
    speech_tone_hz: float = 0.0
    transcripts: list[str] = field(default_factory=lambda: ["Hello."])
    json_answer: str | None = None
    uploads: list[Upload] = field(default_factory=list)
    transcription_status: int = 200
    port: int = 0
    # Response ids unique across servers, as OpenAI's are.
    id_prefix: str = field(default_factory=lambda: f"{uuid.uuid4().hex[:12]}-")
    _runner: web.AppRunner | None = None

    def usage_for(self, n: int, reply: str) -> Usage:
        # Distinct, known numbers per request so a lost or doubled event shows.
        return Usage(prompt_tokens=100 + 7 * n, completion_tokens=10 + n, cached_tokens=32)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_post("/v1/audio/speech", self._speech)
        app.router.add_post("/v1/audio/transcriptions", self._transcriptions)
        self._runner, self.port = await serve_on_loopback(app)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        n = len(self.served)
        reply = self.replies[min(n, len(self.replies) - 1)]
        served = Served(
            messages=body.get("messages", []),
            model=body.get("model", ""),
            reply=reply,
            usage=self.usage_for(n, reply),
        )
        self.served.append(served)
        if not body.get("stream"):
            served.stream = False
            if self.json_answer is None:
                message = {"error": {"message": "only streaming is served"}}
                return web.json_response(message, status=400)
            served.reply = self.json_answer
            served.usage_sent = True
            return web.json_response(
                {
                    "id": f"chatcmpl-{self.id_prefix}{n}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": served.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": self.json_answer},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": served.usage.to_json(),
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        created = int(time.time())
        cid = f"chatcmpl-{self.id_prefix}{n}"

        def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
            payload = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": served.model,
                "choices": choices,
                "usage": usage,
            }
            return f"data: {json.dumps(payload)}\n\n".encode()

        try:
            await resp.write(chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}]))
            words = reply.split(" ")
            for i, word in enumerate(words):
                if self.slow_word_seconds:
                    await asyncio.sleep(self.slow_word_seconds)
                text = word if i == 0 else " " + word
                await resp.write(chunk([{"index": 0, "delta": {"content": text}}]))
                served.words_sent += 1
            await resp.write(chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
            await resp.write(chunk([], served.usage.to_json()))
            served.usage_sent = True
            served.usage_sent_at = time.monotonic()
            await resp.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            # The client hung up (an interrupted reply): no usage reached it.
            served.usage_sent = False
            raise
        return resp

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        speech = Speech(text=str(body.get("input", "")), model=str(body.get("model", "")))
        self.speech.append(speech)
        resp = web.StreamResponse(headers={"Content-Type": "audio/pcm"})
        await resp.prepare(request)
        remaining = max(PCM_CHUNK_BYTES, len(speech.text) * PCM_BYTES_PER_CHARACTER)
        chunk = tone_chunk(self.speech_tone_hz) if self.speech_tone_hz else bytes(PCM_CHUNK_BYTES)
        while remaining > 0:
            size = min(PCM_CHUNK_BYTES, remaining)
            await resp.write(chunk[:size])
            remaining -= size
            if self.speech_chunk_seconds:
                await asyncio.sleep(self.speech_chunk_seconds)
        await resp.write_eof()
        speech.body_sent = True
        speech.body_sent_at = time.monotonic()
        return resp

    async def _transcriptions(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            return web.json_response({"error": {"message": "file is required"}}, status=400)
        try:
            with wave.open(io.BytesIO(upload.file.read())) as wav:
                rate, channels = wav.getframerate(), wav.getnchannels()
                width, frames = wav.getsampwidth(), wav.getnframes()
        except (wave.Error, EOFError) as exc:
            return web.json_response({"error": {"message": f"not a WAV: {exc}"}}, status=400)
        n = len(self.uploads)
        text = self.transcripts[min(n, len(self.transcripts) - 1)]
        upload = Upload(
            model=str(form.get("model", "")),
            language=str(form.get("language", "")),
            sample_rate=rate,
            channels=channels,
            sample_width=width,
            frames=frames,
            text=text,
        )
        self.uploads.append(upload)
        if self.transcription_status != 200:
            message = {"error": {"message": "the transcription failed"}}
            return web.json_response(message, status=self.transcription_status)
        upload.usage = transcription_usage(upload.model, upload.seconds, text)
        return web.json_response({"text": text, "usage": upload.usage})
