"""A response the caller talked over ends as an interrupted turn, deterministically.

The pipeline's own interruption (the caller's speech, through the user aggregator) and
the cancelled response's end race to the assistant aggregator; whichever came first
decided whether the transcript said ``interrupted``. The service now puts the vendor's
word in the frame stream: an ``InterruptionFrame`` ahead of a cancelled response's end.
"""

from __future__ import annotations

import json

import pytest
from pipecat.frames.frames import Frame
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.openai.realtime import events

from flow.bot.realtime import RealtimeLLMService


def response_done(status: str) -> events.ServerEvent:
    response = {"id": "resp_1", "object": "realtime.response", "status": status, "output": []}
    return events.parse_server_event(
        json.dumps({"type": "response.done", "event_id": "event_1", "response": response})
    )


async def frames_pushed(llm: RealtimeLLMService, status: str) -> list[str]:
    pushed: list[str] = []

    async def record(frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM) -> None:
        pushed.append(type(frame).__name__)

    llm.push_frame = record  # type: ignore[method-assign]
    await llm._handle_evt_response_done(response_done(status))
    return pushed


@pytest.mark.parametrize(
    ("status", "settling", "expected"),
    [
        ("cancelled", False, ["InterruptionFrame", "LLMFullResponseEndFrame"]),
        ("completed", False, ["LLMFullResponseEndFrame"]),
        # The call itself cancelled the answer as it ended: nobody talked over it.
        ("cancelled", True, ["LLMFullResponseEndFrame"]),
    ],
)
async def test_a_cancelled_response_ends_after_an_interruption(
    status: str, settling: bool, expected: list[str]
) -> None:
    llm = RealtimeLLMService(api_key="sk-test", transcription_model="whisper-1")
    llm._settling = settling
    assert await frames_pushed(llm, status) == expected
