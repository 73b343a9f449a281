"""``flow demo``: bring Flow up on this machine and run calls end to end.

It uses the local stack (starting it when it is not running), serves the API (the real
app, served by uvicorn in this process) and joins simulated calls through
``POST /api/bot/join`` with the demo key: real Pipecat pipelines, the real OpenAI
client, post-call insights and PostHog capture. Beside them one call runs over real
audio (:mod:`flow.demo.voice_call`): a caller in this process says a recorded line
over WebRTC, so Silero VAD, STT and the bot's voice run too, and the report sets the
STT seconds metered beside the seconds spoken. With no ``OPENAI_API_KEY`` the OpenAI
client talks to the offline responder in :mod:`flow.demo.responder`; with no PostHog
configured, capture goes to a local sink. With ``OPENAI_API_KEY`` and
``FLOW_DEMO_DAILY_ROOM_URL`` set it joins that Daily room for a real call instead. It
then prints what was metered and what it cost, per call and in total, and where each
figure lives, and keeps the dashboard and ``/talk`` up until Ctrl-C.

What it leaves behind: at exit it stops what it started (the API, the offline
stand-ins, and the local stack only when this run started it; a stack that was
already running keeps running). The stack has one demo key (named ``demo``, owner
``flow demo``), reused by every run: local keys are stored hashed, so its plaintext is
kept in the stack's state directory (``demo_key``, readable by its owner only, next to
the stack's JWT secret and service-role key). When that file is gone or its key was
revoked, the demo revokes the demo keys it can no longer use and creates one, so no
more than one demo key is ever active.

Failure behaviour: a stack that cannot start, a join the API refuses or calls that do
not finish in time end the demo with ``demo failed: ...`` and exit status 1, after
the same clean-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from supabase import AsyncClient

from flow import localstack
from flow.config import Settings
from flow.db import keys
from flow.db.call_state import CallStatus
from flow.db.client import DatabaseError, DatabaseUnavailable, create_client
from flow.db.usage import thread_usage_events
from flow.logs import configure_logging

if TYPE_CHECKING:
    from flow.demo.voice_call import VoiceCall

DEMO_KEY_NAME = "demo"
DEMO_KEY_OWNER = "flow demo"
DEMO_KEY_FILE = "demo_key"

SCRIPTS: list[tuple[str, list[str]]] = [
    (
        "caller-ada",
        [
            "Hi, I ordered a pair of headphones last week. Where is my order?",
            "Great. Can you send me the receipt as well?",
            "Thank you, that's all.",
        ],
    ),
    (
        "caller-grace",
        [
            "Hello, how much is the premium plan?",
            "Does it include priority support?",
            "Okay, bye.",
        ],
    ),
    (
        "caller-linus",
        [
            "I need to move my appointment to next week.",
            "Tuesday morning works best for me.",
            "Perfect, thank you.",
        ],
    ),
]


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def _usd(value: Decimal) -> str:
    return f"${value:.6f}"


class Demo:
    def __init__(self, calls: int, port: int | None, exit_after: bool) -> None:
        self.calls = max(1, min(calls, len(SCRIPTS)))
        self.port = port
        self.exit_after = exit_after
        self._cleanups: list[Any] = []
        self.started_stack = False
        self.stack: localstack.StackInfo | None = None
        self.voice: VoiceCall | None = None

    async def _services(self) -> tuple[dict[str, Any], localstack.StackInfo]:
        """Settings overrides (the local stack, and offline stand-ins where no real
        vendor is configured) and the stack."""
        from flow.demo.posthog_sink import DemoPostHogSink
        from flow.demo.responder import start as start_responder

        base = Settings()
        if localstack.status() is None:
            self.started_stack = True  # set first: a half-started stack is stopped too
            info = localstack.up(quiet=False)
        else:
            info = localstack.up(quiet=True)  # applies migrations it has not run yet
            _say(f"[demo] using the local stack already running at {info.supabase_url}")
        self.stack = info
        overrides: dict[str, Any] = {
            "supabase_url": info.supabase_url,
            "supabase_service_role_key": info.service_role_key,
            "flow_env": "development",
            # /talk from a browser on this machine, even one whose only interface is
            # loopback.
            "flow_webrtc_loopback": True,
        }
        # The caller's turn ends after a short, fixed silence (no turn model to load,
        # and espeak's speech does not sound finished to it), unless the environment
        # chose otherwise.
        if "flow_turn_stop" not in base.model_fields_set:
            overrides["flow_turn_stop"] = "timeout"
        self.real_call = bool(
            base.openai_api_key.get_secret_value() and base.flow_demo_daily_room_url
        )
        if not base.openai_api_key.get_secret_value():
            runner, url = await start_responder()
            self._cleanups.append(runner.cleanup)
            overrides.update(
                openai_api_key="demo-offline-responder",
                openai_base_url=url,
                flow_tts_provider="openai",
                deepgram_api_key="",
            )
            _say(f"[demo] no OPENAI_API_KEY: the offline responder answers at {url}")
        self.sink: DemoPostHogSink | None = None
        if not base.posthog_enabled:
            self.sink = DemoPostHogSink()
            sink_url = await self.sink.start()
            self._cleanups.append(self.sink.stop)
            overrides.update(posthog_api_key="phc_demo_local_sink", posthog_host=sink_url)
            _say(f"[demo] no POSTHOG_API_KEY: PostHog events go to a local sink at {sink_url}")
        return overrides, info

    async def run(self) -> int:
        import uvicorn

        from flow.main import create_app

        server: uvicorn.Server | None = None
        serve_task: asyncio.Task[None] | None = None
        try:
            overrides, stack = await self._services()
            settings = Settings(**overrides)
            port = self.port or localstack.free_port(settings.port)
            app = create_app(settings)
            server = uvicorn.Server(
                uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
            )
            serve_task = asyncio.create_task(server.serve())
            while not server.started:
                if serve_task.done():
                    serve_task.result()
                    return 1
                await asyncio.sleep(0.05)
            base_url = f"http://127.0.0.1:{port}"
            _say(f"[demo] API at {base_url} (docs: {base_url}/docs)")
            sb = await create_client(settings)
            key_row, key = await demo_key(sb, Path(stack.state_dir))
            _say(f"[demo] demo API key {key_row['key_prefix']}… (id {key_row['id']})")
            async with httpx.AsyncClient(
                base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
            ) as http:
                threads = await self._join_calls(http, settings)
                finished = await self._wait(http, threads)
            # Live capture is queued; deliver it before counting what the sink holds.
            await asyncio.to_thread(app.state.analytics.flush)
            await self._report(sb, finished, str(key_row["id"]))
            _say("")
            if self.exit_after:
                return 0 if all(t["status"] == CallStatus.COMPLETED for t in finished) else 1
            _say(f"Dashboard: {base_url}/dashboard  (sign in with the demo key below)")
            _say(f"Demo key:  {key}")
            _say("Press Ctrl-C to stop everything the demo started.")
            _say(f"Talk to the bot from this machine's browser: {base_url}/talk")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            return 0
        finally:
            if server is not None and serve_task is not None:
                server.should_exit = True
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(serve_task, timeout=15)
            for cleanup in reversed(self._cleanups):
                with contextlib.suppress(Exception):
                    await cleanup()
            if self.started_stack:
                localstack.down(quiet=True)
                _say("[demo] stopped the API and the local stack")
            elif self.stack is not None:
                _say(
                    f"[demo] stopped the API; the local stack at {self.stack.supabase_url} "
                    "was already running and keeps running (scripts/stack-down stops it)"
                )

    async def _join_calls(self, http: httpx.AsyncClient, settings: Settings) -> list[str]:
        ids = []
        if self.real_call:
            body: dict[str, Any] = {"room_url": settings.flow_demo_daily_room_url}
            if settings.flow_demo_daily_token.get_secret_value():
                body["token"] = settings.flow_demo_daily_token.get_secret_value()
            resp = await http.post("/api/bot/join", json=body)
            resp.raise_for_status()
            _say(f"[demo] the bot joined {settings.flow_demo_daily_room_url}: talk to it there")
            return [resp.json()["workflow_thread_id"]]
        for end_user, script in SCRIPTS[: self.calls]:
            resp = await http.post(
                "/api/bot/join",
                json={"transport": "simulated", "script": script, "process_insights": True},
                headers={"X-Flow-User": end_user},
            )
            if resp.status_code != 202:
                raise RuntimeError(f"join failed: {resp.status_code} {resp.text}")
            thread_id = resp.json()["workflow_thread_id"]
            ids.append(thread_id)
            _say(f"[demo] call {len(ids)}: {thread_id} ({end_user}, {len(script)} caller turns)")
        from flow.demo.voice_call import END_USER, join_voice_call

        self.voice = await join_voice_call(http)
        ids.append(self.voice.thread_id)
        _say(
            f"[demo] call {len(ids)}: {self.voice.thread_id} ({END_USER}, real audio over "
            "WebRTC: recorded speech, Silero VAD, STT, the bot's voice)"
        )
        return ids

    async def _wait(self, http: httpx.AsyncClient, ids: list[str]) -> list[dict[str, Any]]:
        deadline = time.monotonic() + (3600 if self.real_call else 180)
        done: dict[str, dict[str, Any]] = {}
        last: dict[str, str] = {}
        while len(done) < len(ids) and time.monotonic() < deadline:
            for thread_id in ids:
                if thread_id in done:
                    continue
                resp = await http.get(f"/api/bot/{thread_id}")
                resp.raise_for_status()
                thread = resp.json()
                if last.get(thread_id) != thread["status"]:
                    last[thread_id] = thread["status"]
                    _say(f"[demo]   {thread_id[:8]} {thread['status']}")
                if CallStatus(thread["status"]).finished:
                    done[thread_id] = thread
            await asyncio.sleep(0.25)
        if len(done) < len(ids):
            raise RuntimeError("calls did not finish in time")
        return [done[i] for i in ids]

    async def _report(self, sb: AsyncClient, threads: list[dict[str, Any]], key_id: str) -> None:
        grand: dict[tuple[str, str, str], dict[str, Decimal]] = defaultdict(
            lambda: defaultdict(Decimal)
        )
        total_rows = 0
        total_cost = Decimal(0)
        _say("")
        _say("=" * 78)
        _say("What was metered")
        _say("=" * 78)
        for n, thread in enumerate(threads, 1):
            thread_id = thread["workflow_thread_id"]
            rows = await thread_usage_events(sb, thread_id)
            total_rows += len(rows)
            lines: dict[tuple[str, str, str], dict[str, Decimal]] = defaultdict(
                lambda: defaultdict(Decimal)
            )
            for row in rows:
                k = (row["category"], row["kind"], row["model"])
                for agg in (lines[k], grand[k]):
                    agg["events"] += 1
                    agg["input_tokens"] += row["input_tokens"]
                    agg["output_tokens"] += row["output_tokens"]
                    agg["cache_read_tokens"] += row["cache_read_tokens"]
                    agg["characters"] += row["characters"]
                    agg["audio_seconds"] += Decimal(row["audio_seconds"])
                    agg["cost_usd"] += Decimal(row["cost_usd"] or 0)
                    agg["unpriced"] += row["cost_usd"] is None
            call_cost = sum((v["cost_usd"] for v in lines.values()), Decimal(0))
            total_cost += call_cost
            status = thread["status"]
            error = (
                f" ({thread.get('error_code')}: {thread.get('error_message')})"
                if (status == CallStatus.FAILED)
                else ""
            )
            _say(f"Call {n}  {thread_id}  {status}{error}")
            for (category, kind, model), agg in sorted(lines.items()):
                _say("  " + _line(category, kind, model, agg))
            if self.voice is not None and thread_id == self.voice.thread_id:
                for line in await self.voice.report(rows):
                    _say(f"  {line}")
            stats_cost = Decimal(str(thread.get("usage_stats", {}).get("total_cost_usd", "0")))
            _say(
                f"  call total {_usd(call_cost)}  (usage_stats.total_cost_usd {_usd(stats_cost)});"
                f" {len(rows)} ledger rows: usage_events where workflow_thread_id = '{thread_id}'"
            )
            if thread.get("insights"):
                summary = (
                    thread["insights"].get("summary")
                    if isinstance(thread["insights"], dict)
                    else None
                )
                if summary:
                    _say(f"  insights: {summary}")
            _say("")
        _say("All calls, by category and model")
        for (category, kind, model), agg in sorted(grand.items()):
            _say("  " + _line(category, kind, model, agg))
        by_category: dict[str, Decimal] = defaultdict(Decimal)
        for (category, _, _), agg in grand.items():
            by_category[category] += agg["cost_usd"]
        _say(
            "  by category: " + ", ".join(f"{c} {_usd(v)}" for c, v in sorted(by_category.items()))
        )
        if self.sink is not None:
            _say(
                f"  PostHog (local sink): {self.sink.count('$ai_generation')} $ai_generation, "
                f"{self.sink.count('$ai_span')} $ai_span, {self.sink.count('$ai_trace')} $ai_trace"
            )
        _say(
            f"TOTAL cost_usd={total_cost} calls={len(threads)} ledger_rows={total_rows} "
            f"api_key_id={key_id}"
        )


async def demo_key(sb: AsyncClient, state_dir: Path) -> tuple[dict[str, Any], str]:
    """The stack's demo key and its plaintext: the one saved in ``state_dir`` while it
    is active, else a new one, saved there (demo keys whose plaintext is lost are
    revoked first, so at most one demo key is ever active)."""
    saved = state_dir / DEMO_KEY_FILE
    if saved.exists():
        plaintext = saved.read_text().strip()
        found = await keys.find_active_local_key(sb, plaintext)
        if found is not None:
            return await keys.resolve_key(sb, str(found["id"])), plaintext
    for row in await keys.find_keys(sb, DEMO_KEY_NAME):
        if row["owner"] == DEMO_KEY_OWNER and row["is_active"]:
            await keys.revoke_key(sb, str(row["id"]))
    row, plaintext = await keys.create_local_key(sb, DEMO_KEY_NAME, owner=DEMO_KEY_OWNER)
    staged = saved.with_name(f".{DEMO_KEY_FILE}.tmp")
    staged.write_text(plaintext + "\n")
    staged.chmod(0o600)
    staged.replace(saved)
    return row, plaintext


def _line(category: str, kind: str, model: str, agg: dict[str, Decimal]) -> str:
    n = int(agg["events"])
    if kind == "llm":
        what = (
            f"{n} inference(s), {int(agg['input_tokens'])} in "
            f"({int(agg['cache_read_tokens'])} cached) / {int(agg['output_tokens'])} out tokens"
        )
    elif kind == "tts":
        what = f"{n} request(s), {int(agg['characters'])} characters"
    else:
        what = f"{n} increment(s), {agg['audio_seconds']} seconds"
    unpriced = f"  ({int(agg['unpriced'])} unpriced)" if agg["unpriced"] else ""
    return f"{category:<9}{kind:<4}{model:<22}{what:<58}{_usd(agg['cost_usd'])}{unpriced}"


def main(calls: int = 3, port: int | None = None, exit_after: bool = False) -> int:
    os.environ.setdefault("FLOW_LOG_LEVEL", "WARNING")
    configure_logging(os.environ["FLOW_LOG_LEVEL"])
    try:
        return asyncio.run(Demo(calls, port, exit_after).run())
    except KeyboardInterrupt:
        return 130
    except (
        RuntimeError,
        localstack.StackError,
        httpx.HTTPError,
        DatabaseError,
        DatabaseUnavailable,
    ) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
