"""What an operator scrapes: Flow's Prometheus metrics, in one registry of their own.

Every collector is defined here; the code where a thing happens calls one line
(``metrics.CALLS_ENDED.labels(reason).inc()``). Names follow Prometheus's conventions
(the unit in the name, ``_total`` on counters) and every label has a bounded set of
values: an end reason, an HTTP status, a usage kind, a priced model (only models the
price book knows: an unpriced event is counted without its model), an export
destination and integration. No thread, key or user id is ever a label.

Gauges that are cheaper to read than to keep (the spool on disk, PostHog's queue) are
read at scrape time from the sources :func:`watch_spool` and :func:`watch_posthog`
register. Nothing is summed across instances: each instance serves its own numbers and
Prometheus adds them up.

:class:`MetricsServer` serves the scrape endpoint (``GET /metrics``, no auth) on its own port,
``FLOW_METRICS_PORT``, in a thread of its own, so a scrape is answered while the
event loop is busy.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from decimal import Decimal
from http.server import HTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.exposition import MetricsHandler

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

CALLS_LIVE = Gauge(
    "flow_calls_live",
    "Calls this instance holds now, from the join until their post-call step is over",
    registry=REGISTRY,
)
CALLS_ENDED = Counter(
    "flow_calls_ended_total",
    "Calls ended, by why they ended (completed, stopped, idle, max_duration, shutdown, ...)",
    ["reason"],
    registry=REGISTRY,
)
JOINS = Counter(
    "flow_joins_total",
    "Answers to POST /api/bot/join, by HTTP status (202 taken, 402/429 budget, 503 full "
    "or draining, ...)",
    ["status"],
    registry=REGISTRY,
)
DRAINING = Gauge(
    "flow_draining", "1 while this instance drains (takes no new call)", registry=REGISTRY
)
CALL_DURATION = Histogram(
    "flow_call_duration_seconds",
    "How long calls lasted, from the pipeline's start to its end",
    buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600),
    registry=REGISTRY,
)
VOICE_TO_VOICE = Histogram(
    "flow_voice_to_voice_seconds",
    "Time from the end of the caller's speech to the start of the bot's answer",
    buckets=(0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
    registry=REGISTRY,
)
METER_BUFFERED = Gauge(
    "flow_meter_buffered_events",
    "Usage events taken by this instance's meters and not yet in the ledger or the spool",
    registry=REGISTRY,
)
SPOOL_BYTES = Gauge(
    "flow_spool_bytes",
    "Usage waiting on local disk for the database (the spool), in bytes",
    registry=REGISTRY,
)
LEDGER_WRITE = Histogram(
    "flow_ledger_write_seconds",
    "Time of one record_usage_events write to the ledger, by outcome (ok, error)",
    ["outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
USAGE_EVENTS = Counter(
    "flow_usage_events_total",
    "Usage events this instance's meters took, by kind (llm, tts, stt, ...)",
    ["kind"],
    registry=REGISTRY,
)
USAGE_COST = Counter(
    "flow_usage_cost_usd_total",
    "Cost of the priced usage events this instance's meters took, in USD",
    ["kind", "model"],
    registry=REGISTRY,
)
UNPRICED_EVENTS = Counter(
    "flow_usage_unpriced_events_total",
    "Usage events recorded without a price (cost NULL), by kind",
    ["kind"],
    registry=REGISTRY,
)
EXPORT_LAG_SECONDS = Gauge(
    "flow_export_lag_seconds",
    "Age of the oldest ledger row an integration has not exported yet (0: caught up)",
    ["provider", "integration"],
    registry=REGISTRY,
)
EXPORT_LAG_ROWS = Gauge(
    "flow_export_lag_rows",
    "Ledger rows (and corrections) an integration has not exported yet",
    ["provider", "integration"],
    registry=REGISTRY,
)
EXPORT_ERRORS = Counter(
    "flow_export_errors_total",
    "Export cycles that ended with an error, by destination",
    ["provider"],
    registry=REGISTRY,
)
POSTHOG_QUEUE = Gauge(
    "flow_posthog_queue_events",
    "Events waiting in the PostHog client's queue for upload",
    registry=REGISTRY,
)


def usage_event(kind: str, model: str | None, cost_usd: Decimal | None) -> None:
    """Count one usage event a meter took, and its cost when it is priced."""
    USAGE_EVENTS.labels(kind).inc()
    if cost_usd is None:
        UNPRICED_EVENTS.labels(kind).inc()
    else:
        USAGE_COST.labels(kind, model or "").inc(float(cost_usd))


def export_lag(rows: list[dict[str, Any]]) -> None:
    """Set every integration's lag from rows of ``provider``, ``id``, ``lag_rows`` and
    ``lag_seconds``; an integration no longer listed is dropped."""
    seen: set[tuple[str, ...]] = set()
    for row in rows:
        labels = (str(row["provider"]), str(row["id"]))
        seen.add(labels)
        EXPORT_LAG_ROWS.labels(*labels).set(int(row["lag_rows"]))
        EXPORT_LAG_SECONDS.labels(*labels).set(float(row["lag_seconds"]))
    for gauge in (EXPORT_LAG_ROWS, EXPORT_LAG_SECONDS):
        for gone in _label_sets(gauge) - seen:
            gauge.remove(*gone)


def _label_sets(gauge: Gauge) -> set[tuple[str, ...]]:
    return {
        tuple(sample.labels[name] for name in ("provider", "integration"))
        for metric in gauge.collect()
        for sample in metric.samples
    }


def watch_spool(spool_dir: Path) -> None:
    """Read the spool's size at each scrape."""

    def size() -> float:
        try:
            return float(sum(p.stat().st_size for p in Path(spool_dir).glob("*.jsonl*")))
        except OSError:
            return 0.0

    SPOOL_BYTES.set_function(size)


def watch_posthog(queue_size: Callable[[], int]) -> None:
    """Read the PostHog client's queue at each scrape."""
    POSTHOG_QUEUE.set_function(lambda: float(queue_size()))


class _Scrape(MetricsHandler):
    timeout = 5  # seconds a client may take to send its request: one slow client
    # cannot hold the (single) serving thread longer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds is not worth a log line


class MetricsServer:
    """``GET /metrics`` on its own port, served by one thread of its own, one request at
    a time: under load, each thread switch waits for the interpreter lock, so the fewer
    switches a scrape takes (no thread per request, as prometheus-client's own server
    starts), the sooner it is answered."""

    def __init__(self, host: str, port: int) -> None:
        self.server = HTTPServer((host, port), _Scrape.factory(REGISTRY))
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="flow-metrics", daemon=True
        )
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
