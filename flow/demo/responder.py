"""An offline OpenAI-compatible responder for ``flow demo``.

It answers ``POST /v1/chat/completions`` (streaming with a final usage chunk, or JSON)
with deterministic replies; ``POST /v1/audio/speech`` with real speech synthesised by
espeak-ng (24 kHz 16-bit mono PCM, OpenAI's ``pcm`` format; silence as long as the text
would take to say when espeak-ng is not installed); and ``POST /v1/audio/transcriptions``
with a fixed, clearly marked transcript per utterance (it does not listen: the audio it
received is what the STT meter bills). Token counts are honest: prompt and completion tokens are
counted with the model's tiktoken encoding, the way OpenAI counts them, so what the demo
meters is what the same conversation would be billed. It is not a model: replies come
from a short script, and a request asking for JSON gets call insights built from the
transcript it was sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import json
import shutil
import time
import uuid
import wave
from typing import Any

from aiohttp import web

from flow.metering.tokenizer import count_message_tokens, count_tokens

REPLIES = [
    "Happy to help. Your order shipped this morning and should arrive on Thursday.",
    "Sure. The premium plan is twenty dollars a month and includes priority support.",
    "I can do that. I have moved your appointment to next Tuesday at ten.",
    "Thanks for your patience. I have noted the issue and a specialist will call you back.",
    "Of course. Is there anything else I can help you with today?",
    "Got it. I have sent the receipt to the email address on your account.",
]
PCM_BYTES_PER_SECOND = 24_000 * 2  # 24 kHz, 16-bit mono, as OpenAI's pcm format
SECONDS_PER_CHARACTER = 0.004  # short, so the demo runs in seconds
PCM_RATE = 24_000
ESPEAK_TIMEOUT_SECONDS = 10.0


def reply_for(messages: list[dict[str, Any]]) -> str:
    last_user = next(
        (str(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
    )
    if not last_user.strip():
        return "Hello! Thanks for calling. How can I help you today?"
    if any(w in last_user.lower() for w in ("bye", "that's all", "thank you")):
        return "You're welcome. Have a great day, goodbye!"
    digest = hashlib.sha256(last_user.encode()).digest()
    return REPLIES[digest[0] % len(REPLIES)]


def insights_for(messages: list[dict[str, Any]]) -> str:
    transcript = "\n".join(str(m.get("content") or "") for m in messages if m.get("role") == "user")
    lines = [ln.strip() for ln in transcript.splitlines() if ln.strip()]
    caller = [ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith("user:")]
    topics = caller[:3] or lines[:3]
    return json.dumps(
        {
            "summary": f"The caller raised {len(caller) or len(lines)} point(s); "
            "the assistant answered each one.",
            "key_points": topics,
            "sentiment": "positive",
            "action_items": ["Follow up by email with a summary of the call."],
            "analysis": "The caller's questions were resolved during the call.",
        }
    )


def _usage(model: str, messages: list[dict[str, Any]], text: str) -> dict[str, Any]:
    prompt = count_message_tokens(messages, model)
    completion = count_tokens(text, model)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


async def chat_completions(request: web.Request) -> web.StreamResponse:
    try:
        body = await request.json()
        model = str(body["model"])
        messages = list(body["messages"])
    except (json.JSONDecodeError, KeyError, TypeError):
        return web.json_response(
            {"error": {"message": "model and messages are required", "type": "invalid_request"}},
            status=400,
        )
    wants_json = (body.get("response_format") or {}).get("type") in ("json_object", "json_schema")
    text = insights_for(messages) if wants_json else reply_for(messages)
    completion_id = f"chatcmpl-demo-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    usage = _usage(model, messages, text)
    if not body.get("stream"):
        return web.json_response(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        )
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)

    async def send(payload: dict[str, Any]) -> None:
        await resp.write(f"data: {json.dumps(payload)}\n\n".encode())

    base = {"id": completion_id, "object": "chat.completion.chunk", "created": created}
    words = text.split(" ")
    for i, word in enumerate(words):
        delta = {"content": (word if i == 0 else " " + word)}
        if i == 0:
            delta["role"] = "assistant"
        await send({**base, "model": model, "choices": [{"index": 0, "delta": delta}]})
        await asyncio.sleep(0.002)
    await send(
        {**base, "model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    )
    await send({**base, "model": model, "choices": [], "usage": usage})
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def speech(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    text = str(body.get("input", ""))
    pcm = await spoken(text)
    if pcm is None:
        total = int(len(text) * SECONDS_PER_CHARACTER * PCM_BYTES_PER_SECOND) // 2 * 2
        pcm = b"\x00" * total
    resp = web.StreamResponse(headers={"Content-Type": "audio/pcm"})
    await resp.prepare(request)
    chunk = 4800
    for start in range(0, len(pcm), chunk):
        await resp.write(pcm[start : start + chunk])
    await resp.write_eof()
    return resp


async def spoken(text: str) -> bytes | None:
    """``text`` spoken by espeak-ng as 24 kHz 16-bit mono PCM; None without espeak-ng."""
    if not text.strip() or shutil.which("espeak-ng") is None:
        return None
    try:
        proc = await asyncio.create_subprocess_exec(
            "espeak-ng",
            "-v",
            "en-us",
            "-s",
            "165",
            "--stdout",
            text[:2000],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        wav, _ = await asyncio.wait_for(proc.communicate(), ESPEAK_TIMEOUT_SECONDS)
    except (OSError, TimeoutError):
        return None
    return resample_wav(wav, PCM_RATE)


def resample_wav(wav: bytes, rate: int) -> bytes | None:
    """A 16-bit mono WAV as raw PCM at ``rate`` (linear interpolation)."""
    import numpy as np

    try:
        with wave.open(io.BytesIO(wav)) as w:
            source_rate, frames = w.getframerate(), w.readframes(w.getnframes())
    except (wave.Error, EOFError):
        return None
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float64)
    if samples.size == 0:
        return None
    count = int(samples.size * rate / source_rate)
    positions = np.linspace(0, samples.size - 1, count)
    out = np.interp(positions, np.arange(samples.size), samples)
    return np.clip(out, -32768, 32767).astype("<i2").tobytes()


# What the offline transcriber "hears": marked as such, since it does not listen.
TRANSCRIPTS = [
    "[offline demo transcript] Hi, where is my order?",
    "[offline demo transcript] Can I change my appointment?",
    "[offline demo transcript] How much is the premium plan?",
    "[offline demo transcript] Thank you, that's all.",
]


async def transcriptions(request: web.Request) -> web.Response:
    try:
        form = await request.post()
    except ValueError:
        return web.json_response(
            {"error": {"message": "a multipart form with file is required"}}, status=400
        )
    if "file" not in form:
        return web.json_response({"error": {"message": "file is required"}}, status=400)
    heard = request.app[TRANSCRIBED]
    n = next(heard)
    return web.json_response({"text": TRANSCRIPTS[n % len(TRANSCRIPTS)]})


TRANSCRIBED: web.AppKey[itertools.count[int]] = web.AppKey("transcribed")


def build_app() -> web.Application:
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app[TRANSCRIBED] = itertools.count()
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/audio/speech", speech)
    app.router.add_post("/v1/audio/transcriptions", transcriptions)
    return app


async def start(host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Start the responder in this event loop; returns its runner and base URL (…/v1)."""
    runner = web.AppRunner(build_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, f"http://{host}:{bound}/v1"
