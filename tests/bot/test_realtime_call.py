"""Speech-to-speech calls end to end: the real runner and post-call workflow, Pipecat's
``OpenAIRealtimeLLMService`` against a local fake of OpenAI's Realtime websocket, the
simulated caller's audio (a tone, then silence, paced like speech).

The call: the greeting (a response), a question whose long answer the caller talks over
(a ``cancelled`` response, billed), two more turns. Its bill is computed here by hand
from OpenAI's published rates, and the ledger, ``usage_stats``, ``GET /api/usage``,
PostHog's live events and both exports must agree with it to the token and to 1e-8 USD.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from supabase import AsyncClient

from flow.analytics.posthog import PostHogAnalytics
from flow.bot.contract import BotConfig, CallRequest
from flow.bot.runner import create_runner
from flow.bot.simulated import SimulatedParams
from flow.config import Settings
from flow.db import threads as threads_repo
from flow.db.client import call, rows_of
from flow.exporters.base import export_uuid, insert_id
from flow.exporters.integrations import create_integration
from flow.exporters.mixpanel import MixpanelCreate
from flow.exporters.posthog import PostHogCreate
from flow.metering.events import event_id_from
from flow.workflows.bot_call import build_runner
from tests.api.conftest import bearer, local_mode, serve
from tests.exporters.conftest import MP_SECRET, MP_TOKEN, PH_KEY, cleanup_integrations, exporter
from tests.fakes.analytics_sinks import MixpanelSink
from tests.fakes.analytics_sinks import PostHogSink as ExportSink
from tests.fakes.openai_json_server import OpenAIJSONServer
from tests.fakes.openai_realtime_server import FakeRealtime, ResponseUsage, ServedTranscription
from tests.fakes.posthog_sink import PostHogSink
from tests.workflows.support import GOOD_INSIGHTS, openai_server, posthog_sink

__all__ = ["cleanup_integrations", "openai_server", "posthog_sink"]  # fixtures used here

SCRIPT = ["Tell me a long story.", "Stop, please.", "Thanks, bye."]
LONG_ANSWER = " ".join(f"word{i}" for i in range(30))
REPLIES = ["Hello, this is Flow.", LONG_ANSWER, "Okay, stopping.", "You are welcome. Goodbye!"]
CALLER = SimulatedParams(
    caller_audio_seconds=0.3,
    caller_tone_hz=440,
    caller_pause_seconds=0.6,
    caller_paced=True,
    sample_rate=24_000,
    reply_patience_seconds=0.5,
)

# OpenAI's published prices, USD per 1M tokens (and per minute for whisper-1).
MTOK = Decimal(1_000_000)
GPT_REALTIME = {
    "text_in": Decimal("4.00"),
    "cached_text": Decimal("0.40"),
    "audio_in": Decimal("32.00"),
    "cached_audio": Decimal("0.40"),
    "text_out": Decimal("16.00"),
    "audio_out": Decimal("64.00"),
}
MINI_TRANSCRIBE = {
    "text_in": Decimal("1.25"),
    "audio_in": Decimal("3.00"),
    "out": Decimal("5.00"),
}
WHISPER_PER_MINUTE = Decimal("0.006")
USD = Decimal("1e-8")


def llm_id(thread_id: str, response_id: str) -> str:
    """The ledger id of a response's event: from the call and OpenAI's response id."""
    return str(event_id_from("openai-llm", f"{thread_id}/{response_id}"))


def stt_id(thread_id: str, item_id: str) -> str:
    """The ledger id of a transcription's event: from the call and the item id."""
    return str(event_id_from("openai-stt", f"{thread_id}/{item_id}"))


def response_bill(u: ResponseUsage) -> tuple[Decimal, Decimal]:
    rate = GPT_REALTIME
    spent_in = (
        (u.text_in - u.cached_text) * rate["text_in"]
        + u.cached_text * rate["cached_text"]
        + (u.audio_in - u.cached_audio) * rate["audio_in"]
        + u.cached_audio * rate["cached_audio"]
    )
    spent_out = u.text_out * rate["text_out"] + u.audio_out * rate["audio_out"]
    return spent_in / MTOK, spent_out / MTOK


def transcription_bill(t: ServedTranscription) -> tuple[Decimal, Decimal]:
    if t.usage["type"] == "duration":
        return Decimal(str(t.usage["seconds"])) * WHISPER_PER_MINUTE / 60, Decimal(0)
    audio = t.usage["input_token_details"]["audio_tokens"]
    text = t.usage["input_tokens"] - audio
    spent_in = text * MINI_TRANSCRIBE["text_in"] + audio * MINI_TRANSCRIBE["audio_in"]
    return spent_in / MTOK, t.usage["output_tokens"] * MINI_TRANSCRIBE["out"] / MTOK


async def ledger(sb: AsyncClient, thread_id: str) -> list[dict[str, Any]]:
    """The call's ledger rows, every amount read as the exact decimal it is."""
    exact = ("cost_usd", "input_cost_usd", "output_cost_usd", "audio_seconds")
    columns = ",".join(f"{c}_text:{c}::text" for c in exact)
    res = await call(
        lambda: (
            sb.table("usage_events")
            .select(f"*,{columns}")
            .eq("workflow_thread_id", thread_id)
            .execute()
        )
    )
    rows = rows_of(res)
    for row in rows:
        for c in exact:
            text = row.pop(f"{c}_text")
            row[c] = None if text is None else Decimal(text)
    return rows


@pytest.fixture
async def realtime() -> AsyncIterator[FakeRealtime]:
    server = FakeRealtime(replies=list(REPLIES), transcripts=list(SCRIPT), slow_replies={1})
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def export_sinks() -> AsyncIterator[tuple[ExportSink, MixpanelSink]]:
    posthog, mixpanel = ExportSink({PH_KEY}), MixpanelSink({MP_TOKEN}, api_secrets={MP_SECRET})
    await posthog.start()
    await mixpanel.start()
    yield posthog, mixpanel
    await posthog.stop()
    await mixpanel.stop()


def realtime_settings(settings: Settings, **kw: Any) -> Settings:
    return local_mode(settings).model_copy(
        update={
            "flow_meter_flush_seconds": 0.2,
            "flow_sync_enabled": False,
            "flow_allow_private_urls": True,  # the sinks are on loopback
            "flow_secret_key": SecretStr("realtime-tests-secret-key-long-enough"),
            **kw,
        }
    )


async def exported(
    sb: AsyncClient, s: Settings, api_key: dict[str, Any], posthog: ExportSink, mp: MixpanelSink
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every event of the key, exported to PostHog and Mixpanel: properties by ledger id."""
    ids = []
    for body in (
        PostHogCreate.model_validate(
            {"provider": "posthog", "host": posthog.url, "project_api_key": PH_KEY}
            | {"backfill": "all"}
        ),
        MixpanelCreate.model_validate(
            {"provider": "mixpanel", "api_host": mp.url, "project_token": MP_TOKEN}
            | {"api_secret": MP_SECRET, "backfill": "all"}
        ),
    ):
        ids.append((await create_integration(sb, s, body, api_key_id=api_key["id"]))["id"])
    outcomes = await exporter(sb, s).run_due(force=True, ids=ids)
    assert all(o.error is None for o in outcomes), outcomes
    return (
        {e["uuid"]: e["properties"] for e in posthog.events},
        {e["properties"]["$insert_id"]: e["properties"] for e in mp.events},
    )


@pytest.mark.usefixtures("cleanup_integrations")
@pytest.mark.parametrize("transcription", ["gpt-4o-mini-transcribe", "whisper-1"])
async def test_a_realtime_call_is_billed_everywhere_as_openai_bills_it(
    transcription: str,
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    realtime: FakeRealtime,
    openai_server: OpenAIJSONServer,
    posthog_sink: PostHogSink,
    export_sinks: tuple[ExportSink, MixpanelSink],
    tmp_path: Path,
) -> None:
    s = realtime_settings(
        settings,
        openai_base_url=openai_server.base_url,  # the post-call insights
        openai_realtime_base_url=realtime.url,
        flow_realtime_transcription_model=transcription,
        flow_spool_dir=tmp_path,
        posthog_api_key=SecretStr("phc_test_project"),
        posthog_host=posthog_sink.url,
    )
    analytics = PostHogAnalytics.from_settings(s, flush_interval=0.05)
    runner, _ = build_runner(s, sb, analytics, simulated=CALLER)
    thread = await threads_repo.create_thread(
        sb, api_key_id=api_key["id"], transport="simulated", script=SCRIPT
    )
    tid = str(thread["workflow_thread_id"])
    await runner.submit(
        CallRequest(
            workflow_thread_id=tid,
            api_key_id=str(api_key["id"]),
            transport="simulated",
            bot_config=BotConfig(mode="realtime", greeting=REPLIES[0]),
            script=SCRIPT,
            end_user_id="caller-ada",
        )
    )
    await runner.wait(tid)
    await runner.shutdown()
    analytics.flush()

    # What the vendor served: one session, four responses (the second cancelled by the
    # caller talking over it, with usage), three transcriptions of the configured model.
    assert realtime.models == ["gpt-realtime"]
    session = realtime.sessions[-1]
    assert session["audio"]["input"]["transcription"]["model"] == transcription
    assert session["audio"]["output"]["voice"] == "alloy"
    assert [r.status for r in realtime.responses] == ["completed", "cancelled", *["completed"] * 2]
    assert 0 < realtime.responses[1].words_sent < len(LONG_ANSWER.split())
    assert [t.transcript for t in realtime.transcriptions] == SCRIPT
    assert all(t.model == transcription for t in realtime.transcriptions)
    if transcription == "whisper-1":
        assert all(t.usage == {"type": "duration", "seconds": 0.8} for t in realtime.transcriptions)

    # The bill, by hand: each response and each transcription at OpenAI's rates.
    bill: dict[str, tuple[Decimal, Decimal]] = {}
    for r in realtime.responses:
        assert r.usage is not None
        bill[llm_id(tid, r.id)] = response_bill(r.usage)
    for t in realtime.transcriptions:
        bill[stt_id(tid, t.item_id)] = transcription_bill(t)
    cancelled = realtime.responses[1]
    assert sum(bill[llm_id(tid, cancelled.id)]) == Decimal("0.0054736")
    bot_total = sum((i + o for i, o in bill.values()), Decimal(0))

    # The ledger: exactly those events, under ids from the vendor's ids; no TTS, no
    # seconds-based STT of Pipecat's, nothing estimated.
    rows = await ledger(sb, tid)
    bot = {r["id"]: r for r in rows if r["category"] == "bot"}
    assert set(bot) == set(bill)
    assert not any(r["estimated"] for r in rows) and not any(r["kind"] == "tts" for r in rows)
    for r in realtime.responses:
        row = bot[llm_id(tid, r.id)]
        assert r.usage is not None
        assert (row["kind"], row["model"], row["provider"]) == ("llm", "gpt-realtime", "openai")
        assert (
            row["input_tokens"],
            row["cache_read_tokens"],
            row["input_audio_tokens"],
            row["cache_read_audio_tokens"],
            row["output_tokens"],
            row["output_audio_tokens"],
        ) == (
            r.usage.input_tokens,
            r.usage.cached_text + r.usage.cached_audio,
            r.usage.audio_in,
            r.usage.cached_audio,
            r.usage.output_tokens,
            r.usage.audio_out,
        )
    for t in realtime.transcriptions:
        row = bot[stt_id(tid, t.item_id)]
        assert (row["kind"], row["model"]) == ("stt", transcription)
        # The item's seconds, from the server's speech start and stop, in every kind.
        assert row["audio_seconds"] == t.seconds == Decimal("0.8")
        if t.usage["type"] == "tokens":
            assert (row["input_tokens"], row["input_audio_tokens"], row["output_tokens"]) == (
                t.usage["input_tokens"],
                t.usage["input_token_details"]["audio_tokens"],
                t.usage["output_tokens"],
            )
        else:
            assert (row["input_tokens"], row["output_tokens"]) == (0, 0)
    for event_id, (spent_in, spent_out) in bill.items():
        row = bot[event_id]
        assert abs(row["input_cost_usd"] - spent_in) <= USD, row
        assert abs(row["output_cost_usd"] - spent_out) <= USD, row
    ledger_bot = sum(r["cost_usd"] for r in bot.values())
    assert abs(ledger_bot - bot_total) <= USD

    # usage_stats: the ledger's sums (the insights completion is the one other event).
    row = await threads_repo.get_thread(sb, tid)
    assert row is not None and row["status"] == "completed", row
    stats = row["usage_stats"]
    assert abs(Decimal(str(stats["bot_cost_usd"])) - bot_total) <= USD
    total = sum(r["cost_usd"] for r in rows)
    assert Decimal(str(stats["total_cost_usd"])) == total
    for name in (
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "input_audio_tokens",
        "output_audio_tokens",
        "cache_read_audio_tokens",
    ):
        assert stats[name] == sum(r[name] for r in rows), name
    assert stats["llm_calls"] == len(realtime.responses) + 1
    assert Decimal(str(stats["stt_seconds"])) == Decimal("2.4")
    assert stats.get("tts_characters", 0) == 0 and stats.get("estimated_events", 0) == 0

    # The transcript and the insights, as for any call.
    turns = row["transcript"]
    assert [t["content"] for t in turns if t["role"] == "user"] == SCRIPT
    assistant = [t for t in turns if t["role"] == "assistant"]
    assert [t["content"] for t in assistant[:1] + assistant[2:]] == [REPLIES[0], *REPLIES[2:]]
    assert assistant[1]["interrupted"] and LONG_ANSWER.startswith(assistant[1]["content"])
    assert row["insights"]["summary"] == GOOD_INSIGHTS["summary"]

    # GET /api/usage: the same figures.
    async with serve(s, runner) as client:  # type: ignore[arg-type]
        res = await client.get("/api/usage", params={"group_by": "kind"}, headers=bearer(api_key))
    assert res.status_code == 200, res.text
    report = res.json()
    assert Decimal(report["totals"]["cost_usd"]) == total
    groups = {g["key"]: g for g in report["groups"]}
    assert set(groups) == {"llm", "stt"}
    stt_bill = sum(
        (sum(bill[stt_id(tid, t.item_id)]) for t in realtime.transcriptions),
        Decimal(0),
    )
    assert abs(Decimal(groups["stt"]["cost_usd"]) - stt_bill) <= USD
    for name in ("input_tokens", "output_tokens", "input_audio_tokens", "output_audio_tokens"):
        assert report["totals"][name] == stats[name], name
    assert report["totals"]["cache_read_audio_tokens"] == stats["cache_read_audio_tokens"]
    assert Decimal(groups["stt"]["stt_seconds"]) == Decimal("2.4")

    # PostHog, live: a generation per response, a span per transcription, the trace.
    received = await posthog_sink.wait_for(lambda evs: any(e["event"] == "$ai_trace" for e in evs))
    by_uuid = {e["uuid"]: e["properties"] for e in received}
    for event_id, (spent_in, spent_out) in bill.items():
        p, ledger_row = by_uuid[event_id], bot[event_id]
        assert abs(Decimal(str(p["$ai_total_cost_usd"])) - (spent_in + spent_out)) <= USD
        assert p.get("$ai_input_tokens", 0) == ledger_row["input_tokens"]
        assert p.get("$ai_output_tokens", 0) == ledger_row["output_tokens"]
        assert p.get("$ai_audio_input_tokens", 0) == ledger_row["input_audio_tokens"]
        if ledger_row["kind"] == "llm":
            assert p["$ai_audio_output_tokens"] == ledger_row["output_audio_tokens"]
            assert p["$ai_cache_read_audio_tokens"] == ledger_row["cache_read_audio_tokens"]
    [trace] = [e for e in received if e["event"] == "$ai_trace"]
    assert Decimal(str(trace["properties"]["total_cost_usd"])) == total

    # Both exports: every event, its tokens and its cost.
    ph_sent, mp_sent = await exported(sb, s, api_key, *export_sinks)
    for ledger_row in rows:
        for sent in (ph_sent[export_uuid(ledger_row["id"])], mp_sent[insert_id(ledger_row["id"])]):
            assert Decimal(str(sent["cost"])) == ledger_row["cost_usd"]
            for name in ("input_tokens", "output_tokens", "input_audio_tokens"):
                assert sent[name] == ledger_row[name], name
            assert sent["output_audio_tokens"] == ledger_row["output_audio_tokens"]
            assert sent["cache_read_audio_tokens"] == ledger_row["cache_read_audio_tokens"]
    analytics.shutdown()


async def test_a_realtime_call_stopped_while_the_model_answers_bills_that_answer(
    settings: Settings, sb: AsyncClient, thread: dict[str, Any], tmp_path: Path
) -> None:
    realtime = await FakeRealtime(replies=[LONG_ANSWER], slow_replies={0}).start()
    try:
        s = realtime_settings(
            settings, openai_realtime_base_url=realtime.url, flow_spool_dir=tmp_path
        )
        caller = SimulatedParams(**{**vars(CALLER), "reply_patience_seconds": None})
        runner = create_runner(s, sb, simulated=caller)
        tid = str(thread["workflow_thread_id"])
        await runner.submit(
            CallRequest(
                workflow_thread_id=tid,
                api_key_id=str(thread["api_key_id"]),
                transport="simulated",
                bot_config=BotConfig(mode="realtime"),  # no greeting: the caller speaks first
                script=["Tell me a long story."],
            )
        )
        for _ in range(500):  # at most 10 s
            if realtime.responses and realtime.responses[0].words_sent >= 2:
                break
            await asyncio.sleep(0.02)
        assert await runner.stop(tid)
        await asyncio.wait_for(runner.wait(tid), 15)
        await runner.shutdown()
    finally:
        await realtime.stop()

    [answer] = realtime.responses  # no other response: none was asked for twice
    assert answer.status == "cancelled" and answer.usage is not None
    rows = {r["id"]: r for r in await ledger(sb, tid)}
    row = rows[llm_id(tid, answer.id)]
    assert (row["output_tokens"], row["output_audio_tokens"]) == (29, 25)
    assert row["cost_usd"] == sum(response_bill(answer.usage)) and not row["estimated"]
    assert set(rows) == {llm_id(tid, answer.id), stt_id(tid, realtime.transcriptions[0].item_id)}
