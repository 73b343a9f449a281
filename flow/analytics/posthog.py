"""Live PostHog LLM analytics: every metered unit of a call, as it happens.

One :class:`PostHogAnalytics` per process owns the one ``posthog.Posthog`` client. It
turns ledger events into PostHog's LLM-analytics events:

- a bot LLM inference -> ``$ai_generation`` (``uuid`` = the usage event id), with the
  event's own ``$ai_input_cost_usd``/``$ai_output_cost_usd`` (the split stored on the
  ledger row) so PostHog shows exactly the ledger's cost instead of pricing the model,
  and the audio parts of its tokens under the names PostHog's LLM analytics reads
  (``$ai_audio_input_tokens``, ``$ai_audio_output_tokens``, ``$ai_cache_read_audio_tokens``);
- STT and TTS usage, and phone call legs -> ``$ai_span`` with its cost (PostHog does not
  price voice or telephony), and the tokens of a transcription sold by the token;
- the post-call insights completion -> the ``$ai_generation`` of PostHog's wrapped
  OpenAI client, priced here (in ``before_send``) by the process's :class:`PriceBook`
  from the same provider, model and counts as its ledger row, so both agree;
- each call -> one ``$ai_trace`` with its duration and the ledger's totals.

Every event of a call has ``$ai_trace_id`` = the thread id, ``distinct_id`` = the end
user (or the API key id when the caller named none) and ``$groups`` = ``{"api_key": id}``.

Privacy by default: nothing that says what was said (prompts, transcripts, outputs,
insights) leaves Flow unless ``POSTHOG_CAPTURE_CONTENT=true``; the client runs in
PostHog's privacy mode otherwise.

This is analytics, not metering: it only reads usage events (as a meter listener) and
never writes the ledger.

Failure behaviour: capture only enqueues (the SDK's worker thread uploads, retries 5xx
and network errors, then drops); a full queue drops the event. Nothing here raises
into a call or blocks it, and shutdown is bounded. Without ``POSTHOG_API_KEY`` there
is no client and every method is a no-op. The ledger, not PostHog, is the record.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from posthog import Posthog

from flow.config import Settings
from flow.db.call_state import CallStatus, ErrorStage
from flow.metering.events import UsageCategory, UsageEvent, UsageKind, event_id_from
from flow.metering.meter import Listener
from flow.metering.pricing import PriceBook

log = logging.getLogger(__name__)

GROUP_TYPE = "api_key"
TRACE_NAME = "voice_call"
INSIGHTS_SPAN_NAME = "extract_insights"
# Marks the wrapped client's insights generation so ``before_send`` prices it.
CATEGORY_PROPERTY = "flow_category"
UPLOAD_TIMEOUT_SECONDS = 5.0
SHUTDOWN_TIMEOUT_SECONDS = 5.0
# The call's figures on its $ai_trace (from usage_stats): counts, and decimal amounts.
TRACE_COUNTS = (
    "llm_calls input_tokens output_tokens total_tokens cache_read_tokens input_audio_tokens "
    "output_audio_tokens cache_read_audio_tokens tts_characters unpriced_events"
).split()
TRACE_AMOUNTS = (
    "total_cost_usd bot_cost_usd insights_cost_usd stt_seconds telephony_seconds".split()
)


def distinct_id_for(end_user_id: str | None, api_key_id: UUID | str) -> str:
    """The PostHog person: the end user when the caller named one, else the API key."""
    return end_user_id or str(api_key_id)


def groups_for(api_key_id: UUID | str) -> dict[str, str]:
    return {GROUP_TYPE: str(api_key_id)}


def cost_properties(
    input_cost_usd: Decimal | None, output_cost_usd: Decimal | None
) -> dict[str, Decimal]:
    """PostHog's cost properties: with both parts PostHog keeps them as sent instead of
    pricing the model from its own table."""
    if input_cost_usd is None or output_cost_usd is None:
        return {}
    return {
        "$ai_input_cost_usd": input_cost_usd,
        "$ai_output_cost_usd": output_cost_usd,
        "$ai_total_cost_usd": input_cost_usd + output_cost_usd,
    }


class PostHogAnalytics:
    """The process's PostHog capture. Build it with :meth:`from_settings`.

    Parameters:
        client: the SDK client, or None when PostHog is not configured.
        prices: the process's price book (prices the wrapper's insights generation).
        capture_content: send prompts, transcripts and outputs (off by default).
    """

    def __init__(
        self,
        client: Posthog | None,
        *,
        prices: PriceBook,
        capture_content: bool = False,
    ) -> None:
        self.client = client
        self.prices = prices
        self.capture_content = capture_content
        self._closed = False

    @classmethod
    def from_settings(
        cls, settings: Settings, *, prices: PriceBook | None = None, **client_options: Any
    ) -> PostHogAnalytics:
        """A client for ``POSTHOG_API_KEY`` at ``POSTHOG_HOST``; none when the key is unset.
        ``client_options`` go to ``posthog.Posthog`` (tests shorten retries with them)."""
        prices = prices or PriceBook.from_settings(settings)
        analytics = cls(None, prices=prices, capture_content=settings.posthog_capture_content)
        if not settings.posthog_enabled:
            return analytics
        options: dict[str, Any] = {
            "timeout": UPLOAD_TIMEOUT_SECONDS,
            "max_retries": 3,
            "privacy_mode": not settings.posthog_capture_content,
            "before_send": analytics._before_send,
            "on_error": _log_upload_error,
            "disable_geoip": True,
        }
        options.update(client_options)
        analytics.client = Posthog(
            settings.posthog_api_key.get_secret_value(),
            host=settings.posthog_host or None,
            **options,
        )
        return analytics

    @property
    def enabled(self) -> bool:
        return self.client is not None and not self._closed

    @property
    def privacy_mode(self) -> bool:
        return not self.capture_content

    def listeners(self) -> tuple[Listener, ...]:
        """What every meter of the process tells as each usage event is created."""
        return (self.capture_usage,) if self.enabled else ()

    # --- live usage ------------------------------------------------------------
    def capture_usage(self, event: UsageEvent) -> None:
        """Send one ledger event (a meter listener: synchronous, never blocks, never
        raises). Insights usage is left to the wrapped OpenAI client's own event."""
        if not self.enabled or event.category is not UsageCategory.BOT:
            return
        try:
            if event.kind is UsageKind.LLM:
                self._capture_generation(event)
            else:
                self._capture_voice_span(event)
        except Exception:
            log.warning("PostHog capture of usage event %s failed", event.id, exc_info=True)

    def _common(self, event: UsageEvent) -> dict[str, Any]:
        trace_id = str(event.workflow_thread_id)
        return {
            "$ai_trace_id": trace_id,
            "$ai_parent_id": trace_id,
            "$ai_provider": event.provider,
            "$ai_model": event.model,
            "workflow_thread_id": trace_id,
            "api_key_id": str(event.api_key_id),
            "end_user_id": event.end_user_id,
            "flow_usage_event_id": str(event.id),
            CATEGORY_PROPERTY: str(event.category),
            "flow_estimated": event.estimated,
            "flow_price_source": event.price_source,
        }

    def _capture_generation(self, event: UsageEvent) -> None:
        properties: dict[str, Any] = {
            **self._common(event),
            "$ai_span_name": event.processor or "llm",
            "$ai_input_tokens": event.input_tokens,
            "$ai_output_tokens": event.output_tokens,
            "$ai_cache_read_input_tokens": event.cache_read_tokens,
            # Parts of the totals above, as PostHog reads them: audio input includes the
            # cached audio, which is also inside the cache reads.
            "$ai_audio_input_tokens": event.input_audio_tokens,
            "$ai_audio_output_tokens": event.output_audio_tokens,
            "$ai_cache_read_audio_tokens": event.cache_read_audio_tokens,
            "$ai_http_status": event.status_code or (500 if event.is_error else 200),
            "$ai_is_error": event.is_error,
            **cost_properties(event.input_cost_usd, event.output_cost_usd),
        }
        if event.cache_write_tokens:
            properties["$ai_cache_creation_input_tokens"] = event.cache_write_tokens
        if event.reasoning_tokens:
            properties["$ai_reasoning_tokens"] = event.reasoning_tokens
        if event.cost_usd is None:
            properties["flow_unpriced"] = True
        elif event.input_cost_usd is None:  # recorded before the split existed
            properties["$ai_total_cost_usd"] = event.cost_usd
        self._capture("$ai_generation", event, properties)

    def _capture_voice_span(self, event: UsageEvent) -> None:
        properties: dict[str, Any] = {
            **self._common(event),
            "$ai_span_id": str(event.id),
            "$ai_span_name": event.processor or str(event.kind),
            "$ai_is_error": event.is_error,
            "flow_kind": str(event.kind),
            "cost_usd": event.cost_usd,
        }
        if event.cost_usd is not None:
            properties["$ai_total_cost_usd"] = event.cost_usd
        else:
            properties["flow_unpriced"] = True
        measured = {UsageKind.TTS: "tts_characters", UsageKind.TELEPHONY: "telephony_seconds"}
        name = measured.get(event.kind, "stt_audio_seconds")
        properties[name] = event.characters if event.kind is UsageKind.TTS else event.audio_seconds
        if event.input_tokens or event.output_tokens:
            # A transcription sold by the token: its counts and its cost split, as on
            # a generation.
            properties.update(
                {
                    "$ai_input_tokens": event.input_tokens,
                    "$ai_output_tokens": event.output_tokens,
                    "$ai_audio_input_tokens": event.input_audio_tokens,
                    **cost_properties(event.input_cost_usd, event.output_cost_usd),
                }
            )
        self._capture("$ai_span", event, properties)

    def _capture(self, name: str, event: UsageEvent, properties: dict[str, Any]) -> None:
        if event.latency_ms is not None:
            properties["$ai_latency"] = float(event.latency_ms / 1000)
        assert self.client is not None
        self.client.capture(
            name,
            distinct_id=distinct_id_for(event.end_user_id, event.api_key_id),
            properties=properties,
            groups=groups_for(event.api_key_id),
            timestamp=event.occurred_at,
            uuid=str(event.id),
        )

    # --- the call as a whole -----------------------------------------------------
    def capture_trace(
        self,
        *,
        workflow_thread_id: UUID | str,
        api_key_id: UUID | str,
        end_user_id: str | None,
        started_at: datetime | None,
        ended_at: datetime | None,
        usage_stats: Mapping[str, Any],
        status: str,
        error_stage: str | None = None,
        error_code: str | None = None,
        end_reason: str | None = None,
        transcript_text: str | None = None,
        insights: Mapping[str, Any] | None = None,
    ) -> None:
        """One ``$ai_trace`` for a call; its uuid derives from the thread id, so a
        post-call step run twice still leaves one trace."""
        if not self.enabled:
            return
        try:
            trace_id = str(workflow_thread_id)
            duration_seconds = (
                (ended_at - started_at).total_seconds() if started_at and ended_at else None
            )
            properties: dict[str, Any] = {
                "$ai_trace_id": trace_id,
                "$ai_trace_name": TRACE_NAME,
                "$ai_span_name": TRACE_NAME,
                "$ai_is_error": status == CallStatus.FAILED,
                "workflow_thread_id": trace_id,
                "api_key_id": str(api_key_id),
                "end_user_id": end_user_id,
                "status": status,
                "end_reason": end_reason,
                "call_duration_seconds": duration_seconds,
                **{k: usage_stats.get(k, 0) for k in TRACE_COUNTS},
                **{k: _decimal(usage_stats.get(k)) for k in TRACE_AMOUNTS},
            }
            if duration_seconds is not None:
                properties["$ai_latency"] = duration_seconds
            if status == CallStatus.FAILED:
                stage = error_stage or ErrorStage.CALL
                properties["$ai_error"] = f"{stage}: {error_code or CallStatus.FAILED}"
                properties["error_stage"] = error_stage
                properties["error_code"] = error_code
            if self.capture_content:
                properties["$ai_input_state"] = transcript_text
                properties["$ai_output_state"] = dict(insights) if insights else None
            assert self.client is not None
            self.client.capture(
                "$ai_trace",
                distinct_id=distinct_id_for(end_user_id, api_key_id),
                properties=properties,
                groups=groups_for(api_key_id),
                timestamp=ended_at,
                uuid=str(event_id_from("posthog-trace", trace_id)),
            )
        except Exception:
            log.warning("PostHog capture of trace %s failed", workflow_thread_id, exc_info=True)

    # --- the wrapped OpenAI client's generations ----------------------------------
    def wrapper_kwargs(
        self, *, workflow_thread_id: UUID | str, api_key_id: UUID | str, end_user_id: str | None
    ) -> dict[str, Any]:
        """Per-call kwargs for ``posthog.ai.openai.AsyncOpenAI``'s ``create``."""
        trace_id = str(workflow_thread_id)
        return {
            "posthog_distinct_id": distinct_id_for(end_user_id, api_key_id),
            "posthog_trace_id": trace_id,
            "posthog_groups": groups_for(api_key_id),
            "posthog_privacy_mode": self.privacy_mode,
            "posthog_properties": {
                "$ai_span_name": INSIGHTS_SPAN_NAME,
                "$ai_parent_id": trace_id,
                "workflow_thread_id": trace_id,
                "api_key_id": str(api_key_id),
                "end_user_id": end_user_id,
                CATEGORY_PROPERTY: str(UsageCategory.INSIGHTS),
            },
        }

    def _before_send(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        # The wrapper never sends cost; without ours PostHog would price the insights
        # generation from its own table and disagree with the ledger.
        try:
            props = msg.get("properties") or {}
            if (
                msg.get("event") == "$ai_generation"
                and props.get(CATEGORY_PROPERTY) == UsageCategory.INSIGHTS
                and "$ai_total_cost_usd" not in props
                and not props.get("$ai_is_error")
            ):
                price = self.prices.llm(
                    str(props.get("$ai_provider") or ""),
                    str(props.get("$ai_model")),
                    input_tokens=int(props.get("$ai_input_tokens") or 0),
                    output_tokens=int(props.get("$ai_output_tokens") or 0),
                    cache_read_tokens=int(props.get("$ai_cache_read_input_tokens") or 0),
                )
                if price is None:
                    props["flow_unpriced"] = True
                else:
                    costs = cost_properties(price.input_cost_usd, price.output_cost_usd)
                    props.update({k: float(v) for k, v in costs.items()})
        except Exception:
            log.warning("pricing the insights generation for PostHog failed", exc_info=True)
        return msg

    # --- lifecycle ---------------------------------------------------------------
    def flush(self, timeout_seconds: float = SHUTDOWN_TIMEOUT_SECONDS) -> None:
        if self.client is None or self._closed:
            return
        try:
            self.client.flush(timeout_seconds=timeout_seconds)
        except Exception:
            log.warning("PostHog flush failed", exc_info=True)

    def shutdown(self, timeout_seconds: float = SHUTDOWN_TIMEOUT_SECONDS) -> None:
        """Deliver what is queued and stop, waiting at most ``timeout_seconds``: the
        SDK's own shutdown waits for every retry, which a dead PostHog makes long."""
        client, self.client = self.client, None
        if client is None or self._closed:
            return
        self._closed = True

        def drain_and_stop() -> None:
            try:
                client.flush(timeout_seconds=timeout_seconds)
                client.shutdown()
            except Exception:
                log.warning("PostHog shutdown failed", exc_info=True)

        worker = threading.Thread(target=drain_and_stop, name="flow-posthog-shutdown", daemon=True)
        worker.start()
        worker.join(timeout_seconds + 1.0)
        if worker.is_alive():
            log.warning("PostHog did not drain within %.1fs; dropping the rest", timeout_seconds)


def _decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _log_upload_error(error: Exception, batch: list[dict[str, Any]]) -> None:
    # The SDK has given up on this batch after its retries: say so, without the events.
    log.warning("PostHog dropped %d events: %s", len(batch), error.__class__.__name__)
