"""The offline responder ``flow demo`` talks to: real speech out, marked transcripts in."""

from __future__ import annotations

import io
import shutil
import wave
from array import array

import httpx
import pytest

from flow.demo import responder


async def test_speech_is_real_audio_and_transcripts_are_marked() -> None:
    runner, base_url = await responder.start()
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            said = await client.post(
                "/audio/speech",
                json={
                    "model": "tts-1",
                    "voice": "alloy",
                    "input": "Hello from Flow.",
                    "response_format": "pcm",
                },
            )
            buf = io.BytesIO()
            with wave.open(buf, "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(16000)
                w.writeframes(b"\x00\x00" * 16000)
            heard = [
                await client.post(
                    "/audio/transcriptions",
                    files={"file": ("a.wav", buf.getvalue(), "audio/wav")},
                    data={"model": "gpt-4o-transcribe"},
                )
                for _ in range(2)
            ]
            no_file = await client.post("/audio/transcriptions", data={"model": "x"})
    finally:
        await runner.cleanup()
    assert said.status_code == 200
    samples = array("h", said.content)
    assert len(samples) > 24_000 * 0.5  # at least half a second at 24 kHz
    texts = [r.json()["text"] for r in heard]
    assert all(t.startswith("[offline demo transcript]") for t in texts)
    assert texts[0] != texts[1]
    assert no_file.status_code == 400
    if not shutil.which("espeak-ng"):
        pytest.skip("espeak-ng is not installed: the responder speaks silence")
    assert max(abs(x) for x in samples) > 1000, "spoken, not silence"
