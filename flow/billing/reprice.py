"""Repricing: events recorded unpriced (their model had no known price) priced from the
price table in effect now (``FLOW_PRICE_OVERRIDES``, ``FLOW_VOICE_PRICES``, genai-prices
at the event's time; a phone call leg per started minute), the way the meter would have
priced them, each with the ``price_source`` of the price used.

A dry run (the default) prices them in memory and reports, per provider and model, how
many events would be priced and what they would add; ``apply`` also records them, a
page at a time, through ``reprice_usage_events`` (the events, their calls'
``usage_stats``, the hourly rollups, the key's daily spend that budgets read and one
correction each, in one transaction per page). An
event priced meanwhile (a concurrent run) is left alone, so nothing is added twice. The
exports then send each correction as an event of its own naming the original.

Events of a kind this book cannot price, or whose model is still unknown, stay unpriced
and are counted.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from supabase import AsyncClient

from flow.db import corrections
from flow.metering.pricing import LLMPrice, PriceBook, VoicePrice

PAGE = 1000


def price_row(book: PriceBook, row: dict[str, Any]) -> LLMPrice | VoicePrice | None:
    """The price of one ledger row, as the meter prices that kind."""
    provider, model = str(row["provider"]), str(row["model"])
    if row["kind"] == "llm":
        return book.llm(
            provider,
            model,
            input_tokens=int(row["input_tokens"]),
            output_tokens=int(row["output_tokens"]),
            cache_read_tokens=int(row["cache_read_tokens"]),
            cache_write_tokens=int(row["cache_write_tokens"]),
            input_audio_tokens=int(row["input_audio_tokens"]),
            output_audio_tokens=int(row["output_audio_tokens"]),
            cache_read_audio_tokens=int(row["cache_read_audio_tokens"]),
            at=datetime.fromisoformat(str(row["occurred_at"])),
        )
    if row["kind"] == "tts":
        return book.tts(provider, model, int(row["characters"]))
    if row["kind"] == "stt":
        return book.stt(
            provider,
            model,
            Decimal(str(row["audio_seconds"])),
            input_tokens=int(row["input_tokens"]),
            input_audio_tokens=int(row["input_audio_tokens"]),
            output_tokens=int(row["output_tokens"]),
        )
    if row["kind"] == "telephony":
        return book.telephony(provider, model, Decimal(str(row["audio_seconds"])))
    return None


def split(price: LLMPrice | VoicePrice) -> tuple[Decimal, Decimal]:
    """Input and output cost, as the meter records them (a voice price is all input)."""
    if isinstance(price, LLMPrice):
        return price.input_cost_usd, price.output_cost_usd
    return price.cost_usd, Decimal(0)


@dataclass
class ModelLine:
    events: int = 0
    cost_usd: Decimal = Decimal(0)
    unpriced: int = 0
    source: str | None = None


@dataclass
class RepriceSummary:
    """What a run found (and, applied, did).

    Parameters:
        applied: whether the prices were recorded.
        priced: events priced (or that would be); cost_usd: what they add.
        recorded: events the database priced (applied runs; fewer than ``priced`` when
            another run priced some meanwhile); recorded_cost_usd: what they added.
        still_unpriced: events no price was found for.
        by_model: per ``provider/model``.
    """

    applied: bool
    priced: int = 0
    cost_usd: Decimal = Decimal(0)
    recorded: int = 0
    recorded_cost_usd: Decimal = Decimal(0)
    still_unpriced: int = 0
    by_model: dict[str, ModelLine] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "priced": self.priced,
            "cost_usd": str(self.cost_usd),
            "recorded": self.recorded,
            "recorded_cost_usd": str(self.recorded_cost_usd),
            "still_unpriced": self.still_unpriced,
            "by_model": {
                name: {
                    "events": m.events,
                    "cost_usd": str(m.cost_usd),
                    "still_unpriced": m.unpriced,
                    "price_source": m.source,
                }
                for name, m in sorted(self.by_model.items())
            },
        }


async def reprice(
    sb: AsyncClient,
    book: PriceBook,
    *,
    key_ids: Sequence[str] | None = None,
    since: datetime | None = None,
    apply: bool = False,
) -> RepriceSummary:
    """Price every unpriced event (of ``key_ids``, from ``since``); record the prices
    when ``apply``."""
    summary = RepriceSummary(applied=apply)
    after: tuple[str, str] | None = None
    while True:
        rows = await corrections.unpriced_events(
            sb, key_ids=key_ids, since=since, after=after, limit=PAGE
        )
        if not rows:
            return summary
        prices = []
        for row in rows:
            line = summary.by_model.setdefault(f"{row['provider']}/{row['model']}", ModelLine())
            price = price_row(book, row)
            if price is None:
                line.unpriced += 1
                summary.still_unpriced += 1
                continue
            input_cost, output_cost = split(price)
            line.events += 1
            line.cost_usd += input_cost + output_cost
            line.source = price.source
            summary.priced += 1
            summary.cost_usd += input_cost + output_cost
            prices.append(
                {
                    "id": str(row["id"]),
                    "input_cost_usd": str(input_cost),
                    "output_cost_usd": str(output_cost),
                    "price_source": price.source,
                    "correction_id": str(uuid.uuid4()),
                }
            )
        if apply and prices:
            done = await corrections.reprice(sb, prices)
            summary.recorded += int(done["priced"])
            summary.recorded_cost_usd += Decimal(str(done["cost_usd"]))
        after = (
            datetime.fromisoformat(str(rows[-1]["occurred_at"])).isoformat(),
            str(rows[-1]["id"]),
        )
        if len(rows) < PAGE:
            return summary
