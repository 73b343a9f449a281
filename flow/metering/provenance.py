"""Where prices come from, for people: the voice table with its sources and dates, the
negotiated overrides in effect, and how one model would be priced (`flow prices`).

Nothing here prices usage: :class:`~flow.metering.pricing.PriceBook` does, and every
event it prices carries the same ``price_source`` this module shows.
"""

from __future__ import annotations

from typing import Any

from genai_prices import Usage, calc_price

from flow.metering.pricing import GENAI_PRICES_SOURCE, PriceBook
from flow.metering.voice_table import OVERRIDE_SOURCE, VoiceRate

UNITS = {"per_character": "per character", "per_second": "per second", "per_minute": "per minute"}


def _rate_text(rates: dict[str, Any]) -> str:
    return ", ".join(f"${rate} {UNITS.get(unit, unit)}" for unit, rate in rates.items())


def voice_row(key: str, row: VoiceRate) -> dict[str, Any]:
    """One voice-table row as shown and as JSON (rates as decimal strings)."""
    return {
        "key": key,
        "rates": {unit: str(rate) for unit, rate in row.rates.items()},
        "rate": _rate_text(row.rates),
        "price_source": row.price_source(key),
        "tier": row.tier,
        "checked": row.checked,
        "source_url": row.source_url,
        "note": row.note,
        "override": row.override,
    }


def voice_table(book: PriceBook) -> list[dict[str, Any]]:
    """Every voice row in effect, by key (overrides in place of the rows they replace)."""
    return [voice_row(key, row) for key, row in sorted(book.voice_rates.items())]


def llm_overrides(book: PriceBook) -> dict[str, dict[str, str]]:
    """``FLOW_PRICE_OVERRIDES`` as in effect: USD per million tokens, by model."""
    return {
        model: {name: str(rate) for name, rate in rates.items()}
        for model, rates in sorted(book.llm_overrides.items())
    }


def check(book: PriceBook, model: str, provider: str | None = None) -> dict[str, Any]:
    """How ``model`` (or ``provider/model``) would be priced, and from where: as LLM
    tokens (an override, else genai-prices) and as TTS characters or STT audio (the
    voice rows that would apply, for every provider when none is given)."""
    if provider is None and "/" in model:
        provider, model = model.split("/", 1)
    return {
        "model": model,
        "provider": provider,
        "llm": _llm(book, model, provider),
        "voice": _voice(book, model, provider),
    }


def _llm(book: PriceBook, model: str, provider: str | None) -> dict[str, Any] | None:
    override = book.llm_overrides.get(model.lower())
    if override is not None:
        rates = {name: str(rate) for name, rate in override.items()}
        return {
            "price_source": OVERRIDE_SOURCE,
            "rates": rates,
            "rate": ", ".join(f"${r}/{name} MTok" for name, r in rates.items()),
        }
    try:
        found = calc_price(Usage(input_tokens=0, output_tokens=0), model, provider_id=provider)
    except LookupError:
        return None
    return {
        "price_source": f"{GENAI_PRICES_SOURCE} {found.provider.id}/{found.model.id}",
        "rate": str(found.model_price),
    }


def _voice(book: PriceBook, model: str, provider: str | None) -> list[dict[str, Any]]:
    providers = [provider] if provider else sorted({k.split("/", 1)[0] for k in book.voice_rates})
    rows = []
    for name in providers:
        found = book.voice_rate(name, model)
        # Without a provider, a vendor's catch-all row says nothing about this model.
        if found is not None and (provider or not found[0].endswith("/*")):
            rows.append(voice_row(*found))
    return rows
