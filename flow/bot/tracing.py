"""OpenTelemetry traces of calls, when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

:func:`configure` installs the process's tracer provider once (OTLP over HTTP, batched,
service name ``OTEL_SERVICE_NAME``); every call's pipeline then runs with Pipecat's own
tracing: a ``conversation`` span named by the call (``conversation.id`` is the
``workflow_thread_id``; ``flow.workflow_thread_id`` and ``flow.api_key_id`` on it), a
span per turn, and the STT, LLM and TTS spans of each turn with their models, tokens,
characters and latencies. Flow adds one ``flow.usage`` span for every usage event the
call records, in the turn that produced it (the call's span between turns), carrying
the ledger's event id (``flow.usage_event_id``), so a trace and an invoice line point at
each other; and its kind, provider, model, counts and cost.

Failure behaviour: spans are exported in the background (a bounded queue, dropped when
the collector cannot keep up) and an unreachable collector is logged by OpenTelemetry,
never raised into a call; :func:`shutdown` flushes what is queued (bounded) as the
process stops. Headers for the collector (``OTEL_EXPORTER_OTLP_HEADERS``, an API key
say) are a secret setting: sent to the collector, never logged by Flow.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from flow.config import Settings
from flow.metering.events import UsageEvent

if TYPE_CHECKING:
    from pipecat.utils.tracing.tracing_context import TracingContext

log = logging.getLogger(__name__)

FLUSH_MILLIS = 5_000
_provider: Any = None


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector's base endpoint (as the OTLP spec says)."""
    base = endpoint.strip().rstrip("/")
    return base if base.endswith("/v1/traces") else f"{base}/v1/traces"


def parse_headers(text: str) -> dict[str, str] | None:
    """``OTEL_EXPORTER_OTLP_HEADERS`` (``key=value`` pairs, comma separated, URL-encoded)
    as a dict; None when empty (the exporter then reads the environment itself)."""
    pairs = [p.split("=", 1) for p in text.split(",") if "=" in p]
    found = {unquote(k).strip().lower(): unquote(v).strip() for k, v in pairs}
    return {k: v for k, v in found.items() if k} or None


def configure(settings: Settings) -> bool:
    """Turn tracing on for this process when an endpoint is configured (once: the
    first configuration holds). Returns whether calls are traced."""
    global _provider
    endpoint = settings.otel_exporter_otlp_endpoint.strip()
    if not endpoint:
        return _provider is not None
    if _provider is not None:
        return True
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": settings.otel_service_name})
    provider = TracerProvider(resource=resource)
    headers = parse_headers(settings.otel_exporter_otlp_headers.get_secret_value())
    exporter = OTLPSpanExporter(endpoint=traces_url(endpoint), headers=headers, timeout=10)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _provider = provider
    log.info("tracing calls to %s", traces_url(endpoint))
    return True


def enabled() -> bool:
    return _provider is not None


def shutdown() -> None:
    """Export what is queued (waiting at most :data:`FLUSH_MILLIS`), then stop."""
    global _provider
    provider, _provider = _provider, None
    if provider is None:
        return
    try:
        provider.force_flush(FLUSH_MILLIS)
        provider.shutdown()
    except Exception:  # the collector's trouble must not fail a shutdown
        log.warning("tracing: spans could not be flushed", exc_info=True)


class UsageSpans:
    """Makes the ``flow.usage`` span of each usage event of one call."""

    def __init__(self, context: TracingContext) -> None:
        from opentelemetry import trace

        self._context = context
        self._tracer = trace.get_tracer("flow")

    def record(self, event: UsageEvent) -> None:
        parent = self._context.get_turn_context() or self._context.get_conversation_context()
        span = self._tracer.start_span("flow.usage", context=parent, attributes=attributes(event))
        span.end()


def attributes(event: UsageEvent) -> dict[str, str | int | bool]:
    """A usage event as span attributes (decimals as text, as in the ledger)."""
    found: dict[str, str | int | bool] = {
        "flow.usage_event_id": str(event.id),
        "flow.workflow_thread_id": str(event.workflow_thread_id),
        "flow.usage.kind": str(event.kind),
        "flow.usage.category": str(event.category),
        "flow.usage.provider": event.provider,
        "flow.usage.model": event.model,
        "flow.usage.estimated": event.estimated,
    }
    counts = {
        "input_tokens": event.input_tokens,
        "output_tokens": event.output_tokens,
        "cache_read_tokens": event.cache_read_tokens,
        "input_audio_tokens": event.input_audio_tokens,
        "output_audio_tokens": event.output_audio_tokens,
        "characters": event.characters,
    }
    found.update({f"flow.usage.{k}": v for k, v in counts.items() if v})
    if event.audio_seconds:
        found["flow.usage.audio_seconds"] = str(event.audio_seconds)
    if event.cost_usd is not None:
        found["flow.usage.cost_usd"] = str(event.cost_usd)
    return found
