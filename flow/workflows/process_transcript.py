"""Post-call step 1: the saved turns of a call, as the text the insights step reads.

The bot records turns as JSON objects (``role``/``speaker`` and ``content``/``text``,
optionally ``interrupted``). This step keeps the speaker labels exactly as the bot
recorded them, so the insights prompt and the stored transcript speak of the same
people. It saves the call's turns on the thread when the runner has not already done
so, and never overwrites a saved transcript: a retried step redoes no work.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from supabase import AsyncClient

from flow.db import threads as threads_repo

INTERRUPTED_MARK = " [interrupted]"


@dataclass(frozen=True)
class Turn:
    """One utterance: who spoke (as recorded) and what was said."""

    speaker: str
    text: str
    interrupted: bool = False


def turns_of(transcript: Any) -> list[Turn]:
    """The turns of a recorded transcript (a list of turn objects, or an object holding
    one under ``turns``); entries without text are skipped."""
    if isinstance(transcript, Mapping):
        transcript = transcript.get("turns")
    if not isinstance(transcript, Sequence) or isinstance(transcript, str | bytes):
        return []
    turns: list[Turn] = []
    for raw in transcript:
        if isinstance(raw, Turn):
            turns.append(raw)
            continue
        if not isinstance(raw, Mapping):
            continue
        text = raw.get("content", raw.get("text"))
        if not isinstance(text, str) or not text.strip():
            continue
        speaker = raw.get("role", raw.get("speaker")) or "unknown"
        turns.append(Turn(str(speaker), text.strip(), bool(raw.get("interrupted", False))))
    return turns


def transcript_text(turns: Sequence[Turn]) -> str:
    """``speaker: text`` per line; an interrupted bot turn is marked as such, since
    what the caller heard was cut short."""
    return "\n".join(
        f"{t.speaker}: {t.text}{INTERRUPTED_MARK if t.interrupted else ''}" for t in turns
    )


async def process_transcript(
    sb: AsyncClient, workflow_thread_id: UUID | str, call_transcript: Any = None
) -> str:
    """Save the call's turns unless the thread already holds a transcript, and return
    the saved transcript as text."""
    thread = await threads_repo.get_thread(sb, workflow_thread_id)
    if thread is None:
        raise LookupError(f"thread {workflow_thread_id} does not exist")
    saved = thread.get("transcript")
    if saved is None and call_transcript is not None:
        saved = _as_json(call_transcript)
        await threads_repo.update_thread(sb, workflow_thread_id, transcript=saved)
    return transcript_text(turns_of(saved))


def _as_json(transcript: Any) -> Any:
    if isinstance(transcript, Sequence) and not isinstance(transcript, str | bytes):
        return [
            {"role": t.speaker, "content": t.text, "interrupted": t.interrupted}
            if isinstance(t, Turn)
            else _dump(t)
            for t in transcript
        ]
    return _dump(transcript)


def _dump(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json.loads(json.dumps(dataclasses.asdict(value), default=str))
    return value
