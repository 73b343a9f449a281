"""Running several instances: the ``/metrics`` scrape while 50 simulated calls are live,
and join throughput through HAProxy across two ``flow serve`` instances versus one.

One run brings up its own local stack, a local OpenAI-compatible vendor (the tests' fake,
in its own process) and real ``flow serve`` processes:

- Scrape: one instance with ``FLOW_METRICS_PORT``, 50 live simulated calls (long scripts,
  so they stay live); ``GET /metrics`` on the metrics port alternated with
  ``GET /health/live`` on the API port of the same process (the baseline: the cheapest
  request it answers). Target: scrape p50 < 10 ms.
- Joins: two instances and two HAProxies, one sending to the first instance only, one
  to both (least busy first). Rounds alternate between the two for the same time each,
  16 joins in flight; each join starts a short simulated call. The ratio is joins per
  second through two instances over joins per second through one.

The machine is shared: run briefly. Run: ``.venv/bin/python bench/instances.py``
(``--seconds 3 --rounds 2`` for a quicker run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.processes import wait_ready
from flow import localstack
from flow.db.keys import hash_key, new_key_secret
from flow.localstack.cluster import HAProxy, haproxy_config

ROOT = Path(__file__).resolve().parents[1]
LONG_SCRIPT = [f"Tell me about item {n}." for n in range(45)]
SHORT_SCRIPT = ["Hello."]


def vendor(port: int, word_seconds: float) -> None:
    """The tests' OpenAI-compatible fake: six-word replies, a word every
    ``word_seconds``."""
    from tests.fakes.openai_server import FakeOpenAI

    async def serve() -> None:
        fake = FakeOpenAI(replies=["Sure, here it is for you."], slow_word_seconds=word_seconds)
        fake.port = port
        from aiohttp import web

        app = web.Application()
        app.router.add_post("/v1/chat/completions", fake._completions)
        app.router.add_post("/v1/audio/speech", fake._speech)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    asyncio.run(serve())


@contextlib.contextmanager
def started(args: list[str], env: dict[str, str], ready_url: str) -> Iterator[int]:
    """A process, once ``ready_url`` answers; its pid. Killed at the end. Its output is
    dropped (the vendor logs every call the kills cut)."""
    proc = subprocess.Popen(
        args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_ready(proc, ready_url)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=10)


def flow_serve(
    port: int, env: dict[str, str], **more: str
) -> contextlib.AbstractContextManager[int]:
    args = [sys.executable, "-m", "flow.cli", "serve", "--port", str(port)]
    spool = {"FLOW_SPOOL_DIR": f"{env['FLOW_SPOOL_DIR']}-{port}"}
    return started(args, {**env, **spool, **more}, f"http://127.0.0.1:{port}/health/live")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def join(client: httpx.AsyncClient, url: str, key: str, script: list[str]) -> int:
    res = await client.post(
        f"{url}/api/bot/join",
        headers={"Authorization": f"Bearer {key}"},
        json={"transport": "simulated", "script": script, "process_insights": False},
    )
    return res.status_code


async def scrape_bench(env: dict[str, str], key: str, calls: int, scrapes: int) -> None:
    port, metrics_port = localstack.free_port(None), localstack.free_port(None)
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    with flow_serve(port, env, FLOW_METRICS_PORT=str(metrics_port)):
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(timeout=30) as client:
            statuses = await asyncio.gather(
                *(join(client, url, key, LONG_SCRIPT) for _ in range(calls))
            )
            assert all(s == 202 for s in statuses), statuses
            deadline = time.monotonic() + 60
            while f"flow_calls_live {float(calls)}" not in (await client.get(metrics_url)).text:
                assert time.monotonic() < deadline, "the calls did not all start"
                await asyncio.sleep(0.2)
            await asyncio.sleep(2)  # every call past its greeting, talking
            scrape_ms: list[float] = []
            live_ms: list[float] = []
            for _ in range(scrapes):
                for target, into in ((metrics_url, scrape_ms), (f"{url}/health/live", live_ms)):
                    t0 = time.perf_counter()
                    (await client.get(target)).raise_for_status()
                    into.append((time.perf_counter() - t0) * 1000)
            text = (await client.get(metrics_url)).text
    still_live = float(text.split("\nflow_calls_live ", 1)[1].split("\n", 1)[0])
    scrape_p50, live_p50 = statistics.median(scrape_ms), statistics.median(live_ms)
    print(f"\n/metrics with {calls} live simulated calls ({still_live:.0f} live at the end):")
    print(
        f"  scrape p50 {scrape_p50:.2f} ms, p95 {percentile(scrape_ms, 0.95):.2f} ms "
        f"({len(text):,} bytes); GET /health/live p50 {live_p50:.2f} ms (baseline)"
    )
    print(
        f"  ratio {scrape_p50 / live_p50:.2f}x the baseline; target p50 < 10 ms: "
        f"{'met' if scrape_p50 < 10 else 'NOT met'}"
    )


async def joins_per_second(url: str, key: str, seconds: float, concurrency: int) -> float:
    done = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        end = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < end:
                status = await join(client, url, key, SHORT_SCRIPT)
                if status != 202:
                    raise RuntimeError(f"join answered {status}")
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - start)


async def join_bench(
    env: dict[str, str], key: str, seconds: float, rounds: int, workdir: Path
) -> None:
    ports = [localstack.free_port(None) for _ in range(2)]
    with contextlib.ExitStack() as stack:
        for port in ports:
            stack.enter_context(flow_serve(port, env))
        proxies = {}
        for name, servers in (("one", ports[:1]), ("two", ports)):
            front, stats = localstack.free_port(None), localstack.free_port(None)
            directory = workdir / name
            directory.mkdir()
            config = haproxy_config(
                {f"flow{i}": p for i, p in enumerate(servers, 1)}, front, stats, check_ms=500
            )
            proxy = HAProxy(config, directory).start()
            stack.callback(proxy.stop)
            proxies[name] = f"http://127.0.0.1:{front}"
        await asyncio.sleep(2)  # every server checked up
        rates: dict[str, list[float]] = {"one": [], "two": []}
        for _ in range(rounds):
            for name, url in proxies.items():
                rates[name].append(await joins_per_second(url, key, seconds, concurrency=16))
                await asyncio.sleep(1)  # the round's calls end
    one, two = statistics.median(rates["one"]), statistics.median(rates["two"])
    print(f"\njoins through HAProxy, 16 in flight, {rounds} rounds of {seconds:g} s each:")
    print(f"  one instance: {one:.1f} joins/s (rounds {[round(r, 1) for r in rates['one']]})")
    print(f"  two instances: {two:.1f} joins/s (rounds {[round(r, 1) for r in rates['two']]})")
    print(f"  ratio {two / one:.2f}x (two instances over one, on the same {os.cpu_count()} cores)")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "vendor":
        vendor(int(sys.argv[2]), float(sys.argv[3]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--word-seconds",
        type=float,
        default=0.25,
        help="the vendor's pace: a six-word reply takes six times this (0.25: about a "
        "spoken turn; smaller makes every call a back-to-back stress loop)",
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="flow-bench-instances-"))
    info = localstack.up(workdir / "stack", fixed_ports=False, quiet=True)
    try:
        key = new_key_secret()
        localstack.psql(
            info,
            "-c",
            f"insert into api_keys (id, name, key_hash, key_prefix) values "
            f"('{uuid.uuid4()}', 'bench', '{hash_key(key)}', 'flow_sk_bench')",
        )
        vendor_port = localstack.free_port(None)
        env = {
            **os.environ,
            **info.env(),
            "PYTHONPATH": str(ROOT),
            "FLOW_ENV": "test",
            "OPENAI_API_KEY": "sk-bench",
            "OPENAI_BASE_URL": f"http://127.0.0.1:{vendor_port}/v1",
            "UNKEY_ROOT_KEY": "",
            "POSTHOG_API_KEY": "",
            "FLOW_SYNC_ENABLED": "false",
            "FLOW_MAX_BOTS": "1000",
            "FLOW_LOG_LEVEL": "WARNING",
            "FLOW_SPOOL_DIR": str(workdir / "spool"),
        }
        vendor_args = [sys.executable, __file__, "vendor", str(vendor_port), str(args.word_seconds)]
        with started(vendor_args, env, f"http://127.0.0.1:{vendor_port}/"):
            asyncio.run(scrape_bench(env, key, args.calls, args.scrapes))
            asyncio.run(join_bench(env, key, args.seconds, args.rounds, workdir))
    finally:
        localstack.destroy(workdir / "stack")


if __name__ == "__main__":
    main()
