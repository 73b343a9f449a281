"""process_transcript against the real stack: speaker labels as recorded, idempotent."""

from __future__ import annotations

from typing import Any

from supabase import AsyncClient

from flow.db import threads as threads_repo
from flow.workflows.process_transcript import process_transcript, transcript_text, turns_of
from tests.workflows.support import TURNS, new_thread


def test_speaker_labels_are_the_recorded_roles_and_interruptions_are_marked() -> None:
    text = transcript_text(turns_of(TURNS))
    assert text.splitlines() == [
        "assistant: Hello, how can I help?",
        "user: When are you open?",
        "assistant: Nine to five on weekdays. [interrupted]",
        "user: Book me in for Friday please.",
    ]


def test_turns_without_text_are_skipped_and_speaker_key_is_understood() -> None:
    raw = {"turns": [{"speaker": "caller", "text": "hi"}, {"role": "bot", "content": "  "}, 7]}
    assert transcript_text(turns_of(raw)) == "caller: hi"
    assert turns_of("not a transcript") == []


async def test_call_turns_are_saved_once_and_never_overwritten(
    sb: AsyncClient, api_key: dict[str, Any]
) -> None:
    thread = await new_thread(sb, api_key)
    thread_id = thread["workflow_thread_id"]

    first = await process_transcript(sb, thread_id, TURNS)
    saved = await threads_repo.get_thread(sb, thread_id)
    assert saved is not None and saved["transcript"][1] == {
        "role": "user",
        "content": "When are you open?",
    }

    # A retried step with different (e.g. partial) turns keeps what was saved.
    again = await process_transcript(sb, thread_id, [{"role": "user", "content": "other"}])
    assert again == first
    still = await threads_repo.get_thread(sb, thread_id)
    assert still is not None and still["transcript"] == saved["transcript"]
    assert still["updated_at"] == saved["updated_at"]  # nothing was written


async def test_transcript_saved_by_the_runner_is_used_as_is(
    sb: AsyncClient, api_key: dict[str, Any]
) -> None:
    thread = await new_thread(sb, api_key, transcript=[{"role": "user", "content": "saved"}])
    assert await process_transcript(sb, thread["workflow_thread_id"], None) == "user: saved"
