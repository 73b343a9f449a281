"""Watches each LLM inference, so that none goes unbilled.

OpenAI reports usage only at the end of a stream, so an inference that ends without a
usage metric (a reply cut off by the caller) would otherwise cost nothing on the bill.
:class:`LLMInferenceTracker`, placed directly after the LLM, follows every inference
(``LLMFullResponseStartFrame`` .. ``LLMFullResponseEndFrame``) and the text it produced:

- when its first token arrives (the vendor took the request and bills it), it logs
  ahead an estimate of it (the prompt, counted with tiktoken) in the meter's
  write-ahead log, so a process killed mid-reply still bills it once;
- when it reports usage, that usage's event takes the inference's id (superseding the
  estimate);
- when it ends without usage, it records the estimate (prompt from the context as sent,
  completion from the text generated before the cut) with ``estimated=True`` under the
  same id. An inference that did report usage is never estimated.

It passes every frame on unchanged, in Pipecat's direct mode, and does no I/O but the
meter's one ``write`` per logged-ahead inference.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
)
from pipecat.metrics.metrics import LLMUsageMetricsData
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from flow.bot.usage_processor import UsageRecorder
from flow.metering.tokenizer import count_message_tokens, count_tokens

log = logging.getLogger(__name__)


@dataclass
class _Inference:
    started: float
    messages: list[Any]
    text: list[str]
    usage_reported: bool = False
    event_id: UUID = field(default_factory=uuid4)
    prompt_tokens: int | None = None  # counted once, when first needed


class LLMInferenceTracker(FrameProcessor):
    """Estimates the usage of LLM inferences that reported none (interrupted replies).

    Place it directly after the LLM service named ``llm_name``.

    Parameters:
        recorder: where estimated events go.
        context: the conversation context the LLM reads (snapshot at each inference).
        llm_name: the LLM service's name (its metrics' ``processor``).
        provider: the LLM's vendor.
        model: the model asked for (estimates are priced as that model).
        system_instruction: the system prompt sent outside the context messages.
    """

    def __init__(
        self,
        recorder: UsageRecorder,
        context: LLMContext,
        *,
        llm_name: str,
        provider: str,
        model: str,
        system_instruction: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(enable_direct_mode=True, **kwargs)
        self._recorder = recorder
        self._context = context
        self._llm_name = llm_name
        self._provider = provider
        self._model = model
        self._system = system_instruction
        self._open: _Inference | None = None
        self.estimated = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            if isinstance(frame, LLMFullResponseStartFrame):
                self._close()  # a start without an end: the previous one was cut
                # A shallow copy: the aggregators append to the list, never edit
                # messages already sent.
                self._open = _Inference(time.monotonic(), list(self._context.get_messages()), [])
            elif isinstance(frame, LLMTextFrame):
                if self._open is not None:
                    if not self._open.text:
                        # The first token: the vendor took the request and bills it.
                        self._log_ahead(self._open)
                    self._open.text.append(frame.text)
            elif isinstance(frame, MetricsFrame):
                if self._open is not None and any(
                    isinstance(d, LLMUsageMetricsData) and d.processor == self._llm_name
                    for d in frame.data
                ):
                    self._open.usage_reported = True
                    self._recorder.claim(self._llm_name, self._open.event_id)
            elif isinstance(frame, (LLMFullResponseEndFrame, InterruptionFrame)):
                self._close()
            elif isinstance(frame, (EndFrame, CancelFrame)):
                self._close()
        await self.push_frame(frame, direction)

    def _prompt_tokens(self, inference: _Inference) -> int:
        if inference.prompt_tokens is None:
            prompt = list(inference.messages)
            if self._system:
                prompt.insert(0, {"role": "system", "content": self._system})
            messages = [m for m in prompt if isinstance(m, dict)]
            inference.prompt_tokens = count_message_tokens(messages, self._model)
        return inference.prompt_tokens

    def _log_ahead(self, inference: _Inference) -> None:
        try:
            self._recorder.provisional_llm(
                inference.event_id,
                processor=self._llm_name,
                provider=self._provider,
                model=self._model,
                input_tokens=self._prompt_tokens(inference),
            )
        except Exception:  # metering must never break the call
            log.exception("could not log an inference ahead")

    def _close(self) -> None:
        inference, self._open = self._open, None
        if inference is None or inference.usage_reported:
            return
        try:
            input_tokens = self._prompt_tokens(inference)
            output_tokens = count_tokens("".join(inference.text), self._model)
            self._recorder.record_llm(
                processor=self._llm_name,
                provider=self._provider,
                model=self._model,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                latency_s=time.monotonic() - inference.started,
                estimated=True,
                event_id=inference.event_id,
            )
            self.estimated += 1
        except Exception:  # metering must never break the call
            log.exception("could not estimate an inference's usage")
