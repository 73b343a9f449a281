"""PostHog live capture: time spent ON THE CALL PATH per usage event (the meter's
listener), Flow's queued capture versus sending on the calling thread (the posthog
SDK's ``sync_mode``), side by side in one run against one local capture sink; and
Flow's capture with the sink down (it must stay as cheap as when it is up).

Rounds alternate between the approaches so machine noise hits all of them alike; the
median of the rounds is reported. Run: ``.venv/bin/python bench/posthog_capture.py``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flow.analytics.posthog import PostHogAnalytics
from flow.config import Settings
from flow.metering.events import UsageEvent, UsageKind
from flow.metering.pricing import PriceBook
from tests.fakes.posthog_sink import PostHogSink

BOOK = PriceBook()


def events(n: int) -> list[UsageEvent]:
    thread, key = uuid.uuid4(), uuid.uuid4()
    out = []
    for i in range(n):
        price = BOOK.llm("openai", "gpt-4o-mini", input_tokens=800 + i, output_tokens=40)
        out.append(
            UsageEvent(
                workflow_thread_id=thread,
                api_key_id=key,
                kind=UsageKind.LLM,
                provider="openai",
                model="gpt-4o-mini",
                input_tokens=800 + i,
                output_tokens=40,
                cost_usd=price.total_cost_usd if price else None,
                latency_ms=Decimal("400"),
            )
        )
    return out


def analytics(host: str, **options: object) -> PostHogAnalytics:
    settings = Settings(posthog_api_key=SecretStr("phc_bench"), posthog_host=host)
    return PostHogAnalytics.from_settings(settings, prices=BOOK, **options)


def per_event_us(capture: PostHogAnalytics, batch: list[UsageEvent]) -> float:
    start = time.perf_counter()
    for event in batch:
        capture.capture_usage(event)
    return (time.perf_counter() - start) / len(batch) * 1e6


def main() -> None:
    # The sink-down rounds log every failed upload (SDK and Flow); the figures are the point.
    logging.disable(logging.CRITICAL)
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    sink = PostHogSink().start()
    dead = PostHogSink().start()
    dead.down()
    queued = analytics(sink.url)
    inline = analytics(sink.url, sync_mode=True)
    queued_down = analytics(dead.url, max_retries=0)
    results: dict[str, list[float]] = {"queued": [], "sync_mode": [], "queued_sink_down": []}
    for _ in range(args.rounds):
        results["queued"].append(per_event_us(queued, events(args.events)))
        results["sync_mode"].append(per_event_us(inline, events(args.events)))
        results["queued_sink_down"].append(per_event_us(queued_down, events(args.events)))
    for client in (queued, inline, queued_down):
        client.shutdown(2.0)
    sink.stop()

    med = {k: statistics.median(v) for k, v in results.items()}
    print(
        f"{args.events} events x {args.rounds} rounds; "
        "median microseconds per event on the call path"
    )
    for name, value in med.items():
        print(f"  {name:18s} {value:10.1f} us")
    print(
        f"sync_mode / queued (how much Flow's capture spares the call): "
        f"{med['sync_mode'] / med['queued']:.1f}x"
    )
    print(
        f"queued_sink_down / queued (1.0 = PostHog down costs the call nothing): "
        f"{med['queued_sink_down'] / med['queued']:.2f}x"
    )


if __name__ == "__main__":
    main()
