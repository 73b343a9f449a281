"""The voice tests' caller: Flow's own WebRTC caller (:mod:`flow.demo.caller`), saying
the recordings committed beside the tests (``tests/recordings``, made by ``make.sh``)."""

from __future__ import annotations

from pathlib import Path

from flow.demo.caller import Caller, read_wav

RECORDINGS = Path(__file__).resolve().parents[1] / "recordings"

__all__ = ["RECORDINGS", "Caller", "recording"]


def recording(name: str) -> bytes:
    """A committed recording's PCM (16 kHz mono s16)."""
    return read_wav(RECORDINGS / f"{name}.wav")
