"""Turns Pipecat's usage metrics into priced usage events, each exactly once.

Metrics travel downstream only, so where a processor sits decides what it sees: one
between the LLM and the TTS never sees TTS usage. Flow therefore places two
processors that share one :class:`UsageRecorder`:

- :class:`UsageMetricsProcessor` at the very end of the pipeline (after the output
  transport and the assistant aggregator). It is the only place a ``MetricsFrame``
  becomes a usage event: every STT, LLM and TTS usage metric passes it exactly once,
  whichever stage reported it.
- :class:`LLMInferenceTracker` right after the LLM. It records nothing from metrics;
  it watches each inference (``LLMFullResponseStartFrame`` .. ``LLMFullResponseEndFrame``)
  and the text it produced. OpenAI reports usage only at the end of a stream, so an
  inference that ends without a usage metric (a reply cut off by the caller) is
  estimated with tiktoken (prompt from the context as sent, completion from the text
  generated before the cut) and recorded with ``estimated=True``. An inference that
  did report usage is never estimated.

Both pass every frame on unchanged and run in Pipecat's direct mode (no queue, no
task of their own), so they see frames in exactly the order they were pushed. Nothing
here does I/O: events go to the meter's in-memory buffer.

An LLM usage event waits for the processing-time metric of the same inference (pushed
just after the usage) to fill ``latency_ms``; TTFB is the fallback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID

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
from pipecat.metrics.metrics import (
    LLMTokenUsage,
    LLMUsageMetricsData,
    MetricsData,
    ProcessingMetricsData,
    STTUsageMetricsData,
    TTFBMetricsData,
    TTSUsageMetricsData,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from flow.metering.events import UsageCategory, UsageEvent, UsageKind
from flow.metering.meter import Meter
from flow.metering.pricing import PriceBook, cost_fields, gross_input_tokens
from flow.metering.tokenizer import count_message_tokens, count_tokens

log = logging.getLogger(__name__)

UNKNOWN_MODEL = "unknown"


@dataclass(frozen=True)
class Attribution:
    """Who pays for a call's usage.

    Parameters:
        workflow_thread_id: the call.
        api_key_id: the customer's key.
        end_user_id: the customer's end user, if given.
    """

    workflow_thread_id: UUID
    api_key_id: UUID
    end_user_id: str | None = None


@dataclass
class _PendingLLM:
    processor: str
    provider: str
    model: str
    usage: LLMTokenUsage
    ttfb_s: float | None


class UsageRecorder:
    """Builds, prices and hands usage events to the meter (no I/O).

    Parameters:
        attribution: thread, key and end user stamped on every event.
        meter: receives each event.
        price_book: prices each event at creation.
        providers: the vendor behind each service name (``{"llm": "openai", ...}``).
        models: fallback model per service name, for metrics that carry none.
    """

    def __init__(
        self,
        attribution: Attribution,
        meter: Meter,
        price_book: PriceBook,
        providers: Mapping[str, str],
        models: Mapping[str, str] | None = None,
    ) -> None:
        self._who = attribution
        self._meter = meter
        self._prices = price_book
        self._providers = dict(providers)
        self._models = dict(models or {})
        self._pending: dict[str, _PendingLLM] = {}
        self._ttfb_s: dict[str, float] = {}

    # --- metrics -----------------------------------------------------------------
    def on_metrics(self, data: list[MetricsData]) -> None:
        for item in data:
            if isinstance(item, LLMUsageMetricsData):
                self._on_llm_usage(item)
            elif isinstance(item, ProcessingMetricsData):
                self._finish_llm(item.processor, latency_s=item.value)
            elif isinstance(item, TTFBMetricsData):
                if item.processor in self._pending or item.value > 0:
                    self._ttfb_s[item.processor] = item.value
            elif isinstance(item, TTSUsageMetricsData):
                self._on_tts(item)
            elif isinstance(item, STTUsageMetricsData):
                self._on_stt(item)

    def _is_startup_zero(self, item: MetricsData, value: float) -> bool:
        # PipelineParams(send_initial_empty_metrics=True) pushes zeros with model None.
        return not item.model and value == 0

    def _provider(self, processor: str) -> str:
        return self._providers.get(processor, processor or "unknown")

    def _model(self, item: MetricsData) -> str:
        return item.model or self._models.get(item.processor) or UNKNOWN_MODEL

    def _on_llm_usage(self, item: LLMUsageMetricsData) -> None:
        usage = item.value
        if self._is_startup_zero(item, usage.prompt_tokens + usage.completion_tokens):
            return
        # A usage still waiting for its latency is complete as it is: record it first.
        self._finish_llm(item.processor, latency_s=None)
        self._pending[item.processor] = _PendingLLM(
            processor=item.processor,
            provider=self._provider(item.processor),
            model=self._model(item),
            usage=usage,
            ttfb_s=self._ttfb_s.pop(item.processor, None),
        )

    def _finish_llm(self, processor: str, *, latency_s: float | None) -> None:
        pending = self._pending.pop(processor, None)
        if pending is None:
            return
        if latency_s is None:
            latency_s = pending.ttfb_s
        usage = pending.usage
        cache_read = usage.cache_read_input_tokens or 0
        cache_write = usage.cache_creation_input_tokens or 0
        input_tokens = gross_input_tokens(
            pending.provider, usage.prompt_tokens, cache_read, cache_write
        )
        self.record_llm(
            processor=pending.processor,
            provider=pending.provider,
            model=pending.model,
            input_tokens=input_tokens,
            output_tokens=usage.completion_tokens,
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
            reasoning_tokens=usage.reasoning_tokens or 0,
            latency_s=latency_s,
        )

    def record_llm(
        self,
        *,
        processor: str,
        provider: str,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        reasoning_tokens: int = 0,
        latency_s: float | None = None,
        estimated: bool = False,
    ) -> UsageEvent:
        price = self._prices.llm(
            provider,
            model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cache_read_tokens,
            cache_write_tokens=cache_write_tokens,
        )
        return self._add(
            kind=UsageKind.LLM,
            processor=processor,
            provider=provider,
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cache_read_tokens,
            cache_write_tokens=cache_write_tokens,
            reasoning_tokens=reasoning_tokens,
            cache_hit=cache_read_tokens > 0,
            **cost_fields(price),
            latency_ms=_ms(latency_s),
            estimated=estimated,
        )

    def _on_tts(self, item: TTSUsageMetricsData) -> None:
        if item.value <= 0:
            return
        provider, model = self._provider(item.processor), self._model(item)
        self._add(
            kind=UsageKind.TTS,
            processor=item.processor,
            provider=provider,
            model=model,
            characters=item.value,
            **cost_fields(self._prices.tts(provider, model, item.value)),
        )

    def _on_stt(self, item: STTUsageMetricsData) -> None:
        if item.value.audio_seconds <= 0:
            return
        provider, model = self._provider(item.processor), self._model(item)
        seconds = Decimal(repr(item.value.audio_seconds))
        self._add(
            kind=UsageKind.STT,
            processor=item.processor,
            provider=provider,
            model=model,
            audio_seconds=seconds,
            **cost_fields(self._prices.stt(provider, model, seconds)),
        )

    def _add(self, **fields: Any) -> UsageEvent:
        event = UsageEvent(
            workflow_thread_id=self._who.workflow_thread_id,
            api_key_id=self._who.api_key_id,
            end_user_id=self._who.end_user_id,
            category=UsageCategory.BOT,
            **fields,
        )
        self._meter.add(event)
        return event

    def finish(self) -> None:
        """Record LLM usage still waiting for its latency (call end)."""
        for processor in list(self._pending):
            self._finish_llm(processor, latency_s=None)


def _ms(seconds: float | None) -> Decimal | None:
    if seconds is None or seconds < 0:
        return None
    return Decimal(repr(seconds)) * 1000


class UsageMetricsProcessor(FrameProcessor):
    """Consumes every ``MetricsFrame`` into usage events; passes every frame on.

    Place it last in the pipeline, where every stage's metrics have arrived.
    """

    def __init__(self, recorder: UsageRecorder, **kwargs: Any) -> None:
        super().__init__(enable_direct_mode=True, **kwargs)
        self._recorder = recorder

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, MetricsFrame):
            try:
                self._recorder.on_metrics(frame.data)
            except Exception:  # metering must never break the call
                log.exception("usage metrics could not be recorded")
        elif isinstance(frame, (EndFrame, CancelFrame)):
            self._recorder.finish()
        await self.push_frame(frame, direction)


@dataclass
class _Inference:
    started: float
    messages: list[Any]
    text: list[str]
    usage_reported: bool = False


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
                    self._open.text.append(frame.text)
            elif isinstance(frame, MetricsFrame):
                if self._open is not None and any(
                    isinstance(d, LLMUsageMetricsData) and d.processor == self._llm_name
                    for d in frame.data
                ):
                    self._open.usage_reported = True
            elif isinstance(frame, (LLMFullResponseEndFrame, InterruptionFrame)):
                self._close()
            elif isinstance(frame, (EndFrame, CancelFrame)):
                self._close()
        await self.push_frame(frame, direction)

    def _close(self) -> None:
        inference, self._open = self._open, None
        if inference is None or inference.usage_reported:
            return
        try:
            prompt = list(inference.messages)
            if self._system:
                prompt.insert(0, {"role": "system", "content": self._system})
            input_tokens = count_message_tokens(
                [m for m in prompt if isinstance(m, dict)], self._model
            )
            output_tokens = count_tokens("".join(inference.text), self._model)
            self._recorder.record_llm(
                processor=self._llm_name,
                provider=self._provider,
                model=self._model,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                latency_s=time.monotonic() - inference.started,
                estimated=True,
            )
            self.estimated += 1
        except Exception:  # metering must never break the call
            log.exception("could not estimate an inference's usage")
