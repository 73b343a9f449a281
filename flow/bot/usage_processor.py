"""Turns Pipecat's usage metrics into priced usage events, each exactly once.

Metrics travel downstream only, so where a processor sits decides what it sees: one
between the LLM and the TTS never sees TTS usage. Flow therefore places two
processors that share one :class:`UsageRecorder`:

- :class:`UsageMetricsProcessor` at the very end of the pipeline (after the output
  transport and the assistant aggregator). It is the only place a ``MetricsFrame``
  becomes a usage event: every STT, LLM and TTS usage metric passes it exactly once,
  whichever stage reported it.
- :class:`flow.bot.inference_tracker.LLMInferenceTracker` right after the LLM. It
  records nothing from metrics; it follows each inference so that one that reports no
  usage (a reply cut off by the caller, or by the process dying) is still billed, as
  an estimate.

A ``MetricsFrame`` that reaches the processor twice (the same frame id: a processor
that pushes a frame it already pushed, a frame re-queued after an interruption) counts
once: the processor remembers the ids of the last :data:`RECENT_FRAME_IDS` metrics
frames it consumed. Every other road of usage is keyed by event id already.

Both pass every frame on unchanged and run in Pipecat's direct mode (no queue, no
task of their own), so they see frames in exactly the order they were pushed. Events
go to the meter (its write-ahead log and in-memory buffer); nothing here waits.

An LLM usage event waits for the processing-time metric of the same inference (pushed
just after the usage) to fill ``latency_ms``; TTFB is the fallback.

Usage that the vendor names (a Realtime response, a transcribed conversation item)
arrives as :class:`SourcedTokenUsage` or :class:`TranscriptionUsage` carrying that name,
and its event's id derives from it. Transcription sold by the token (OpenAI's
``gpt-4o-transcribe`` family) arrives as a :class:`TranscriptionUsage` with its tokens
beside its seconds, and is priced by the tokens.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Unpack
from uuid import UUID

from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
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
from pipecat.processors.frame_processor import (
    FrameDirection,
    FrameProcessor,
    FrameProcessorSetup,
)

from flow.bot.reported_usage import SourcedTokenUsage, TranscriptionUsage
from flow.metering.events import UsageCategory, UsageEvent, UsageKind, audio_parts, event_id_from
from flow.metering.meter import Meter
from flow.metering.pricing import PriceBook, TokenCounts, cost_fields, gross_input_tokens

log = logging.getLogger(__name__)

UNKNOWN_MODEL = "unknown"
# Metrics frames remembered to count each once; a repeat arrives right behind its first.
RECENT_FRAME_IDS = 1024


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
    event_id: UUID | None = None


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
        # Ids of inferences whose usage report is on its way down the pipeline, in order.
        self._claimed: dict[str, deque[UUID]] = {}

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
        provider = self._provider(item.processor)
        claimed = self._claimed.get(item.processor)
        if isinstance(usage, SourcedTokenUsage):
            event_id: UUID | None = self.source_event_id(provider, "llm", usage.source_id)
        else:
            event_id = claimed.popleft() if claimed else None
        self._pending[item.processor] = _PendingLLM(
            processor=item.processor,
            provider=provider,
            model=self._model(item),
            usage=usage,
            ttfb_s=self._ttfb_s.pop(item.processor, None),
            event_id=event_id,
        )

    # --- inferences in progress ----------------------------------------------------
    def provisional_llm(
        self, event_id: UUID, *, processor: str, provider: str, model: str, input_tokens: int
    ) -> None:
        """Log ahead an inference that has started: its prompt, as an estimate. The
        inference's own event (reported or estimated) takes the same id and supersedes
        it; if the process dies first, the replay records this estimate."""
        price = self._prices.llm(provider, model, input_tokens=input_tokens, output_tokens=0)
        self._meter.provisional(
            self._event(
                id=event_id,
                kind=UsageKind.LLM,
                processor=processor,
                provider=provider,
                model=model,
                input_tokens=input_tokens,
                **cost_fields(price),
                estimated=True,
            )
        )

    def claim(self, processor: str, event_id: UUID) -> None:
        """The next usage report of ``processor`` is the inference ``event_id``'s."""
        self._claimed.setdefault(processor, deque()).append(event_id)

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
        audio = audio_parts(
            input_tokens=input_tokens,
            output_tokens=usage.completion_tokens,
            cache_read_tokens=cache_read,
            input_audio_tokens=usage.input_audio_tokens or 0,
            output_audio_tokens=usage.output_audio_tokens or 0,
            cache_read_audio_tokens=usage.cache_read_input_audio_tokens or 0,
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
            **audio,
            latency_s=latency_s,
            event_id=pending.event_id,
        )

    def record_llm(
        self,
        *,
        processor: str,
        provider: str,
        model: str,
        reasoning_tokens: int = 0,
        latency_s: float | None = None,
        estimated: bool = False,
        event_id: UUID | None = None,
        **counts: Unpack[TokenCounts],
    ) -> UsageEvent:
        price = self._prices.llm(provider, model, **counts)
        return self._add(
            kind=UsageKind.LLM,
            processor=processor,
            provider=provider,
            model=model,
            **counts,
            reasoning_tokens=reasoning_tokens,
            cache_hit=counts.get("cache_read_tokens", 0) > 0,
            **cost_fields(price),
            latency_ms=_ms(latency_s),
            estimated=estimated,
            **({"id": event_id} if event_id is not None else {}),
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
        usage = item.value
        tokens = usage if isinstance(usage, TranscriptionUsage) else None
        if usage.audio_seconds <= 0 and not (tokens and tokens.has_tokens):
            return
        provider, model = self._provider(item.processor), self._model(item)
        seconds = Decimal(repr(max(usage.audio_seconds, 0.0)))
        counts = {"input_tokens": 0, "input_audio_tokens": 0, "output_tokens": 0}
        source: dict[str, UUID] = {}
        if tokens is not None:
            counts = {
                "input_tokens": tokens.input_tokens,
                "input_audio_tokens": min(tokens.input_audio_tokens, tokens.input_tokens),
                "output_tokens": tokens.output_tokens,
            }
            if tokens.source_id:
                source["id"] = self.source_event_id(provider, "stt", tokens.source_id)
        self._add(
            kind=UsageKind.STT,
            processor=item.processor,
            provider=provider,
            model=model,
            audio_seconds=seconds,
            **counts,
            **cost_fields(self._prices.stt(provider, model, seconds, **counts)),
            **source,
        )

    def source_event_id(self, provider: str, kind: str, source_id: str) -> UUID:
        """The id of the event for the vendor's unit of work ``source_id`` in this call:
        the same report seen twice is one event. The call is part of the key, so a
        server whose ids are unique only within a session still never collides."""
        key = f"{self._who.workflow_thread_id}/{source_id}"
        return event_id_from(f"{provider}-{kind}", key)

    def _event(self, **fields: Any) -> UsageEvent:
        return UsageEvent(
            workflow_thread_id=self._who.workflow_thread_id,
            api_key_id=self._who.api_key_id,
            end_user_id=self._who.end_user_id,
            category=UsageCategory.BOT,
            **fields,
        )

    def _add(self, **fields: Any) -> UsageEvent:
        event = self._event(**fields)
        self._meter.add(event)
        return event

    @property
    def meter(self) -> Meter:
        """The call's meter, which tells its listeners of every event."""
        return self._meter

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
        self._recent: deque[int] = deque()
        self._recent_ids: set[int] = set()

    def _first_time(self, frame: Frame) -> bool:
        """Whether this frame's id is new (remembered among the last few)."""
        if frame.id in self._recent_ids:
            return False
        if len(self._recent) >= RECENT_FRAME_IDS:
            self._recent_ids.discard(self._recent.popleft())
        self._recent.append(frame.id)
        self._recent_ids.add(frame.id)
        return True

    async def setup(self, setup: FrameProcessorSetup) -> None:  # type: ignore[override]
        await super().setup(setup)
        if setup.enable_tracing and setup.tracing_context is not None:
            from flow.bot.tracing import UsageSpans

            self._recorder.meter.listen(UsageSpans(setup.tracing_context).record)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, MetricsFrame):
            if self._first_time(frame):
                try:
                    self._recorder.on_metrics(frame.data)
                except Exception:  # metering must never break the call
                    log.exception("usage metrics could not be recorded")
            else:
                log.warning("metrics frame %s arrived again: counted once", frame.name)
        elif isinstance(frame, (EndFrame, CancelFrame)):
            self._recorder.finish()
        await self.push_frame(frame, direction)
