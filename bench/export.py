"""Export throughput: Flow's PostHog and Mixpanel exporters versus the official SDKs.

The same ledger rows (in the form the sync cycle reads them) go to the same local sink,
side by side in one run:

- PostHog: Flow's ``PostHogDestination`` (2000-event gzip ``/batch/`` requests) versus
  ``posthog.Posthog(...).capture`` for every event + ``flush()`` (SDK defaults, except a
  queue large enough not to drop events).
- Mixpanel: Flow's ``MixpanelDestination`` (``/track``, 2000 events a request) versus
  ``mixpanel.Mixpanel(token, consumer=BufferedConsumer(...)).track`` + ``flush()`` (the
  SDK sends at most 50 events a request).

The sink (aiohttp, its own process) parses every request and counts the events, so a run
only counts if every event arrived. Prints events/s and the ratios (targets: Flow >= 1x
the PostHog SDK, >= 5x the Mixpanel SDK, >= 10,000 events/s).

    .venv/bin/python bench/export.py [--events 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import multiprocessing
import socket
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from flow.exporters.base import DistinctIdMode, export_uuid, insert_id
from flow.exporters.mixpanel import MixpanelDestination
from flow.exporters.posthog import PostHogDestination

PH_KEY = "phc_benchprojectkey"
MP_TOKEN = "0123456789abcdef0123456789abcdef"


# --- the sink (own process) ---------------------------------------------------
def _serve(port: int) -> None:
    from aiohttp import web

    counts = {"events": 0}

    def events_of(raw: bytes, content_type: str) -> list[Any]:
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        if content_type.startswith("application/x-www-form-urlencoded"):
            raw = parse_qs(raw.decode())["data"][0].encode()
        parsed = json.loads(raw)
        if isinstance(parsed, dict):
            parsed = parsed.get("batch", [])
        return parsed if isinstance(parsed, list) else [parsed]

    async def batch(request: web.Request) -> web.Response:
        counts["events"] += len(events_of(await request.read(), request.content_type))
        return web.json_response({"status": "Ok"})

    async def track(request: web.Request) -> web.Response:
        counts["events"] += len(events_of(await request.read(), request.content_type))
        return web.json_response({"status": 1, "error": None})

    async def count(request: web.Request) -> web.Response:
        return web.json_response(counts)

    async def reset(request: web.Request) -> web.Response:
        counts["events"] = 0
        return web.json_response(counts)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.add_routes(
        [
            web.post("/batch/", batch),
            web.post("/track", track),
            web.get("/count", count),
            web.post("/reset", reset),
        ]
    )
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sink_count(url: str) -> int:
    return int(httpx.get(f"{url}/count").json()["events"])


def _sink_reset(url: str) -> None:
    httpx.post(f"{url}/reset")


# --- the events -----------------------------------------------------------------
def make_rows(n: int) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    key, thread = str(uuid.uuid4()), str(uuid.uuid4())
    return [
        {
            "id": str(uuid.uuid4()),
            "seq": i,
            "workflow_thread_id": thread,
            "api_key_id": key,
            "end_user_id": f"user-{i % 50}",
            "occurred_at": (now - timedelta(seconds=n - i)).isoformat(),
            "kind": "llm",
            "category": "bot",
            "provider": "openai",
            "model": "gpt-4o-mini",
            "input_tokens": 900 + i % 100,
            "output_tokens": 120,
            "input_audio_tokens": 0,
            "output_audio_tokens": 0,
            "cache_read_audio_tokens": 0,
            "cost_usd": str((Decimal("0.0000001500") * (900 + i % 100)).quantize(Decimal("1e-10"))),
            "latency_ms": "412.5",
            "status_code": 200,
            "is_error": False,
            "cache_hit": False,
            "estimated": False,
        }
        for i in range(n)
    ]


def sdk_properties(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": row["model"],
        "provider": row["provider"],
        "latency_ms": float(row["latency_ms"]),
        "input_tokens": row["input_tokens"],
        "output_tokens": row["output_tokens"],
        "total_tokens": row["input_tokens"] + row["output_tokens"],
        "input_audio_tokens": row["input_audio_tokens"],
        "output_audio_tokens": row["output_audio_tokens"],
        "cache_read_audio_tokens": row["cache_read_audio_tokens"],
        "cost": float(row["cost_usd"]),
        "status_code": row["status_code"],
        "is_error": row["is_error"],
        "cache_hit": row["cache_hit"],
        "kind": row["kind"],
        "category": row["category"],
        "workflow_thread_id": row["workflow_thread_id"],
        "api_key_id": row["api_key_id"],
        "estimated": row["estimated"],
    }


# --- the contenders --------------------------------------------------------------
async def flow_send(dest: Any, rows: list[dict[str, Any]]) -> None:
    for start in range(0, len(rows), dest.max_batch):
        result = await dest.send(rows[start : start + dest.max_batch], historical=False)
        assert not result.skipped


def run_flow_posthog(url: str, rows: list[dict[str, Any]]) -> float:
    async def go() -> float:
        async with httpx.AsyncClient(timeout=60) as client:
            dest = PostHogDestination(
                client,
                host=url,
                project_api_key=PH_KEY,
                event_name="prism_request",
                distinct_id_mode=DistinctIdMode.SOURCE,
                source_id="prism-gateway",
            )
            t0 = time.perf_counter()
            await flow_send(dest, rows)
            return time.perf_counter() - t0

    return asyncio.run(go())


def run_flow_mixpanel(url: str, rows: list[dict[str, Any]]) -> float:
    async def go() -> float:
        async with httpx.AsyncClient(timeout=60) as client:
            dest = MixpanelDestination(
                client,
                api_host=url,
                project_token=MP_TOKEN,
                api_secret=None,
                service_account=None,
                event_name="prism_request",
                distinct_id_mode=DistinctIdMode.SOURCE,
                source_id="prism-gateway",
            )
            t0 = time.perf_counter()
            await flow_send(dest, rows)
            return time.perf_counter() - t0

    return asyncio.run(go())


def run_posthog_sdk(url: str, rows: list[dict[str, Any]]) -> float:
    from posthog import Posthog

    client = Posthog(PH_KEY, host=url, max_queue_size=len(rows) + 1, disable_geoip=True)
    t0 = time.perf_counter()
    for r in rows:
        client.capture(
            "prism_request",
            distinct_id="prism-gateway",
            properties=sdk_properties(r),
            timestamp=datetime.fromisoformat(r["occurred_at"]),
            uuid=export_uuid(r["id"]),
        )
    client.flush()
    elapsed = time.perf_counter() - t0
    client.shutdown()
    return elapsed


def run_mixpanel_sdk(url: str, rows: list[dict[str, Any]]) -> float:
    from mixpanel import BufferedConsumer, Mixpanel

    consumer = BufferedConsumer(events_url=f"{url}/track", request_timeout=60)
    mp = Mixpanel(MP_TOKEN, consumer=consumer)
    t0 = time.perf_counter()
    for r in rows:
        props = sdk_properties(r)
        props["time"] = int(datetime.fromisoformat(r["occurred_at"]).timestamp() * 1000)
        props["$insert_id"] = insert_id(r["id"])
        mp.track("prism-gateway", "prism_request", props)
    consumer.flush()
    return time.perf_counter() - t0


def measure(name: str, fn: Any, url: str, rows: list[dict[str, Any]], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        _sink_reset(url)
        elapsed = fn(url, rows)
        arrived = _sink_count(url)
        if arrived != len(rows):
            raise SystemExit(f"{name}: {arrived} of {len(rows)} events arrived; run not counted")
        best = min(best, elapsed)
    rate = len(rows) / best
    print(f"  {name:<34} {rate:>10,.0f} events/s  ({best:.3f} s for {len(rows):,})")
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3, help="best of N runs each")
    args = parser.parse_args()

    port = _free_port()
    sink = multiprocessing.Process(target=_serve, args=(port,), daemon=True)
    sink.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            _sink_count(url)
            break
        except httpx.TransportError:
            time.sleep(0.05)
    try:
        rows = make_rows(args.events)
        print(f"export throughput, {args.events:,} events, best of {args.repeats}, local sink")
        print("PostHog (/batch/)")
        flow_ph = measure("Flow PostHogDestination", run_flow_posthog, url, rows, args.repeats)
        sdk_ph = measure("posthog SDK capture+flush", run_posthog_sdk, url, rows, args.repeats)
        print("Mixpanel (/track)")
        flow_mp = measure("Flow MixpanelDestination", run_flow_mixpanel, url, rows, args.repeats)
        sdk_mp = measure("mixpanel SDK BufferedConsumer", run_mixpanel_sdk, url, rows, args.repeats)
    finally:
        sink.terminate()
        sink.join()
    ph_ratio, mp_ratio = flow_ph / sdk_ph, flow_mp / sdk_mp
    print(f"ratio Flow/posthog SDK:  {ph_ratio:.1f}x  (target >= 1x)")
    print(f"ratio Flow/mixpanel SDK: {mp_ratio:.1f}x  (target >= 5x)")
    ok = ph_ratio >= 1 and mp_ratio >= 5 and min(flow_ph, flow_mp) >= 10_000
    print("targets met" if ok else "targets NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
