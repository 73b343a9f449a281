"""Every price says where it came from: the voice table's rows carry a source, a date
and a tier; every priced event names the price it used; `flow prices` shows them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from genai_prices import __version__ as genai_prices_version
from pydantic import ValidationError

from flow.metering.events import UsageEvent, UsageKind
from flow.metering.pricing import PriceBook, cost_fields
from flow.metering.voice_table import DEFAULT_VOICE_PRICES

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("key", sorted(DEFAULT_VOICE_PRICES))
def test_every_default_voice_row_has_a_source_a_date_and_a_tier(key: str) -> None:
    row = DEFAULT_VOICE_PRICES[key]
    assert row.source_url.startswith("https://"), f"{key} has no source"
    assert date.fromisoformat(row.checked) <= date.today(), f"{key} has no date checked"
    assert row.tier.strip(), f"{key} says not which tier it assumes"
    assert row.rates and not row.override


def test_a_genai_price_names_the_package_version_and_the_model_it_matched() -> None:
    price = PriceBook().llm("openai", "gpt-4o-mini", input_tokens=100, output_tokens=10)
    assert price is not None
    assert price.source == f"genai-prices {genai_prices_version} openai/gpt-4o-mini"


def test_overrides_say_override() -> None:
    book = PriceBook(
        llm_overrides={"gpt-4o-mini": {"input": Decimal("0.1"), "output": Decimal("0.4")}},
        voice_prices={"openai/tts-1": {"per_character": Decimal("0.00001")}},
    )
    llm = book.llm("openai", "gpt-4o-mini", input_tokens=100, output_tokens=10)
    tts = book.tts("openai", "tts-1", 10)
    assert llm is not None and llm.source == "override"
    assert tts is not None and tts.source == "override"


def test_a_voice_price_names_its_row_date_and_tier() -> None:
    # A Deepgram model id (nova-3-general) is priced by its family's row.
    stt = PriceBook().stt("deepgram", "nova-3-general", Decimal(60))
    assert stt is not None
    checked = DEFAULT_VOICE_PRICES["deepgram/nova-3"].checked
    assert stt.source == f"voice-table {checked} deepgram/nova-3 streaming"
    assert stt.cost_usd == Decimal("0.0048")


def test_the_event_carries_the_source_and_an_unpriced_event_has_none() -> None:
    who = {"workflow_thread_id": uuid.uuid4(), "api_key_id": uuid.uuid4()}
    book = PriceBook()
    priced = UsageEvent(
        **who,
        kind=UsageKind.TTS,
        provider="openai",
        model="tts-1",
        characters=40,
        **cost_fields(book.tts("openai", "tts-1", 40)),
    )
    assert priced.price_source is not None and priced.price_source.startswith("voice-table ")
    assert UsageEvent.from_row(priced.to_row()) == priced
    unpriced = UsageEvent(
        **who,
        kind=UsageKind.TTS,
        provider="acme",
        model="voice-1",
        characters=40,
        **cost_fields(book.tts("acme", "voice-1", 40)),
    )
    assert unpriced.cost_usd is None and unpriced.price_source is None
    with pytest.raises(ValidationError, match="unpriced event has none"):
        UsageEvent(**who, kind=UsageKind.TTS, provider="a", model="b", price_source="override")


def flow(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "flow.cli", *args],
        env={**os.environ, "PYTHONPATH": pythonpath, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_flow_prices_lists_the_voice_table_with_sources_and_the_overrides() -> None:
    overrides = {"FLOW_PRICE_OVERRIDES": '{"gpt-4o-mini": {"input": "0.10", "output": "0.40"}}'}
    out = flow("prices", **overrides)
    assert out.returncode == 0, out.stderr
    assert f"genai-prices {genai_prices_version}" in out.stdout
    assert "gpt-4o-mini: input 0.10, output 0.40" in out.stdout
    for key, row in DEFAULT_VOICE_PRICES.items():
        [line] = [ln for ln in out.stdout.splitlines() if ln.split()[:1] == [key]]
        assert row.checked in line and row.source_url in line

    data = json.loads(flow("prices", "--json", **overrides).stdout)
    assert data["llm"]["overrides"] == {"gpt-4o-mini": {"input": "0.10", "output": "0.40"}}
    by_key = {row["key"]: row for row in data["voice"]}
    assert by_key["deepgram/nova-3"]["rates"] == {"per_minute": "0.0048"}
    assert by_key["deepgram/nova-3"]["tier"].startswith("streaming, pay as you go")


def test_flow_prices_check_shows_how_one_model_is_priced_and_from_where() -> None:
    out = flow("prices", "--check", "gpt-4o-mini")
    assert out.returncode == 0, out.stderr
    assert f"genai-prices {genai_prices_version} openai/gpt-4o-mini" in out.stdout

    voice = json.loads(flow("prices", "--check", "deepgram/aura-2-thalia-en", "--json").stdout)
    [row] = voice["voice"]
    assert row["key"] == "deepgram/aura-2" and row["price_source"].startswith("voice-table ")

    custom = flow(
        "prices",
        "--check",
        "cartesia/sonic-2",
        FLOW_VOICE_PRICES='{"cartesia/sonic-2": {"per_character": "0.00004"}}',
    )
    assert custom.returncode == 0 and "voice: override: $0.00004 per character" in custom.stdout

    unknown = flow("prices", "--check", "gpt-unknown-9")
    assert unknown.returncode == 1 and "unpriced" in unknown.stdout
