"""Prices for every metered unit, in Decimal USD.

- LLM tokens: negotiated per-model overrides first (``FLOW_PRICE_OVERRIDES``), then
  genai-prices (historical prices, cached tokens at the cached rate). Each modality at
  its own rate: speech-to-speech models bill audio tokens at several times the text
  rate, and cached audio at a cached-audio rate.
- TTS characters and STT seconds: a small table of our own for voice vendors
  (genai-prices does not cover Deepgram or Cartesia), overridable per ``provider/model``
  with ``FLOW_VOICE_PRICES``.
- Phone call legs: the same table (``twilio/inbound``, ``twilio/outbound``), per minute;
  a leg is billed per started minute, as Twilio bills it.

Token counts arrive here in the gross convention (``input_tokens`` includes cached
tokens); :func:`gross_input_tokens` converts the net counts some providers report.
Audio counts are parts of the totals (see :mod:`flow.metering.events`): text is what is
left once audio is taken out.
An unknown model prices as ``None``: the event is recorded and counted as unpriced.
Pricing never raises, never prices at zero for lack of a price, and never borrows
another model's price.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from genai_prices import Usage, calc_price

from flow.config import Settings
from flow.metering.events import quantize_cost

log = logging.getLogger(__name__)

MTOK = Decimal(1_000_000)

# Providers whose usage reports prompt tokens NET of cache reads/writes (Pipecat passes
# the vendor's numbers through): Anthropic's Messages API and Bedrock's Converse API.
NET_PROMPT_PROVIDERS = frozenset({"anthropic", "aws", "bedrock", "aws_bedrock"})

# USD per character (TTS) and per second (STT), as published by each vendor.
# Keys are ``provider/model``; ``provider/*`` applies to any model of that vendor.
DEFAULT_VOICE_PRICES: dict[str, dict[str, Decimal]] = {
    # OpenAI TTS: $15 / $30 per 1M characters.
    "openai/tts-1": {"per_character": Decimal("0.000015")},
    "openai/tts-1-hd": {"per_character": Decimal("0.00003")},
    # OpenAI transcription: $0.006 / $0.003 per minute.
    "openai/whisper-1": {"per_second": Decimal("0.0001")},
    "openai/gpt-4o-transcribe": {"per_second": Decimal("0.0001")},
    "openai/gpt-4o-mini-transcribe": {"per_second": Decimal("0.00005")},
    # Deepgram: Aura $0.015 / Aura-2 $0.030 per 1K characters;
    # Nova-3 streaming $0.0077/min, Nova-2 streaming $0.0058/min.
    "deepgram/aura": {"per_character": Decimal("0.000015")},
    "deepgram/aura-2": {"per_character": Decimal("0.00003")},
    "deepgram/nova-3": {"per_minute": Decimal("0.0077")},
    "deepgram/nova-2": {"per_minute": Decimal("0.0058")},
    # Twilio Programmable Voice (US): receiving and making calls, per started minute.
    "twilio/inbound": {"per_minute": Decimal("0.0085")},
    "twilio/outbound": {"per_minute": Decimal("0.014")},
}


def gross_input_tokens(
    provider: str, prompt_tokens: int, cache_read_tokens: int = 0, cache_write_tokens: int = 0
) -> int:
    """Prompt tokens in the gross convention (cached tokens included)."""
    if provider.lower() in NET_PROMPT_PROVIDERS:
        return prompt_tokens + cache_read_tokens + cache_write_tokens
    return prompt_tokens


@dataclass(frozen=True)
class LLMPrice:
    """A price split the way vendors bill it: input (prompt) and output (completion)."""

    input_cost_usd: Decimal
    output_cost_usd: Decimal

    @property
    def total_cost_usd(self) -> Decimal:
        return self.input_cost_usd + self.output_cost_usd


def cost_fields(price: LLMPrice | Decimal | None) -> dict[str, Decimal | None]:
    """A price as the usage event's cost fields. A voice price (a Decimal) is all input:
    TTS bills the characters it is given, STT the audio it is sent."""
    if price is None:
        return {"input_cost_usd": None, "output_cost_usd": None}
    if isinstance(price, LLMPrice):
        return {"input_cost_usd": price.input_cost_usd, "output_cost_usd": price.output_cost_usd}
    return {"input_cost_usd": price, "output_cost_usd": Decimal(0)}


class PriceBook:
    """Looks up prices. The process builds one, with :meth:`from_settings`, and shares
    it: every meter, the insights step and live analytics price with the same book."""

    def __init__(
        self,
        llm_overrides: dict[str, dict[str, Decimal]] | None = None,
        voice_prices: dict[str, dict[str, Decimal]] | None = None,
    ) -> None:
        self._llm_overrides = {k.lower(): v for k, v in (llm_overrides or {}).items()}
        self._voice = {**DEFAULT_VOICE_PRICES}
        self._voice.update({k.lower(): v for k, v in (voice_prices or {}).items()})

    @classmethod
    def from_settings(cls, settings: Settings) -> PriceBook:
        """The book for ``FLOW_PRICE_OVERRIDES`` and ``FLOW_VOICE_PRICES``."""
        return cls(settings.price_overrides(), settings.voice_prices())

    # --- LLM -----------------------------------------------------------------
    def llm(
        self,
        provider: str,
        model: str,
        *,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        input_audio_tokens: int = 0,
        output_audio_tokens: int = 0,
        cache_read_audio_tokens: int = 0,
        at: datetime | None = None,
    ) -> LLMPrice | None:
        """Price one inference given GROSS input tokens; None when the model is unknown.
        The audio counts are parts of the totals, each priced at its own rate."""
        tokens = _Tokens(
            input_tokens,
            output_tokens,
            cache_read_tokens,
            cache_write_tokens,
            input_audio_tokens,
            output_audio_tokens,
            cache_read_audio_tokens,
        )
        override = self._llm_overrides.get(model.lower())
        if override is not None:
            return _override_price(override, tokens)
        try:
            calc = _calc(provider.lower() or None, model, tokens, at)
        except LookupError:
            log.warning("no price for model %s/%s: recorded as unpriced", provider, model)
            return None
        except Exception:  # a malformed price entry must not lose the usage
            log.exception("pricing failed for %s/%s: recorded as unpriced", provider, model)
            return None
        return LLMPrice(quantize_cost(calc[0]), quantize_cost(calc[1]))

    # --- voice ---------------------------------------------------------------
    def _voice_rate(self, provider: str, model: str) -> dict[str, Decimal] | None:
        """Exact ``provider/model``, else the longest model family (Deepgram voices are
        named ``aura-2-thalia-en``), else ``provider/*``."""
        provider, model = provider.lower(), model.lower()
        exact = self._voice.get(f"{provider}/{model}")
        if exact is not None:
            return exact
        families = [
            key
            for key in self._voice
            if key.startswith(provider + "/") and model.startswith(key.split("/", 1)[1] + "-")
        ]
        if families:
            return self._voice[max(families, key=len)]
        return self._voice.get(f"{provider}/*")

    def tts(self, provider: str, model: str, characters: int) -> Decimal | None:
        rate = self._voice_rate(provider, model)
        if rate is None or "per_character" not in rate:
            log.warning("no TTS price for %s/%s: recorded as unpriced", provider, model)
            return None
        return quantize_cost(characters * rate["per_character"])

    def stt(self, provider: str, model: str, audio_seconds: Decimal) -> Decimal | None:
        rate = self._voice_rate(provider, model)
        if rate is not None and "per_second" in rate:
            return quantize_cost(audio_seconds * rate["per_second"])
        if rate is not None and "per_minute" in rate:
            return quantize_cost(audio_seconds * rate["per_minute"] / 60)
        log.warning("no STT price for %s/%s: recorded as unpriced", provider, model)
        return None

    def telephony(self, provider: str, model: str, seconds: Decimal) -> Decimal | None:
        """A phone call leg of ``seconds``: per started minute at a ``per_minute`` rate
        (``seconds`` exactly at a ``per_second`` one)."""
        rate = self._voice_rate(provider, model)
        if rate is not None and "per_minute" in rate:
            return quantize_cost(billed_minutes(seconds) * rate["per_minute"])
        if rate is not None and "per_second" in rate:
            return quantize_cost(seconds * rate["per_second"])
        log.warning("no telephony price for %s/%s: recorded as unpriced", provider, model)
        return None


def billed_minutes(seconds: Decimal) -> int:
    """The minutes a phone call leg is billed for: every started minute."""
    return math.ceil(seconds / 60) if seconds > 0 else 0


@dataclass(frozen=True)
class _Tokens:
    """One inference's counts, gross, with the audio parts inside the totals."""

    input: int
    output: int
    cache_read: int
    cache_write: int
    input_audio: int
    output_audio: int
    cache_read_audio: int


def _override_price(rates: dict[str, Decimal], t: _Tokens) -> LLMPrice:
    """A negotiated price, USD per million tokens per modality. A rate not given is the
    undiscounted rate it refines: ``cache_read`` falls back to ``input``,
    ``input_audio`` to ``input``, ``cache_read_audio`` to ``input_audio`` and
    ``output_audio`` to ``output``."""
    input_rate = rates.get("input", Decimal(0))
    output_rate = rates.get("output", Decimal(0))
    cache_rate = rates.get("cache_read", input_rate)
    audio_in_rate = rates.get("input_audio", input_rate)
    audio_cache_rate = rates.get("cache_read_audio", audio_in_rate)
    audio_out_rate = rates.get("output_audio", output_rate)
    cached_text = t.cache_read - t.cache_read_audio
    uncached_audio = t.input_audio - t.cache_read_audio
    uncached_text = t.input - t.cache_read - uncached_audio
    input_cost = (
        uncached_text * input_rate
        + cached_text * cache_rate
        + uncached_audio * audio_in_rate
        + t.cache_read_audio * audio_cache_rate
    )
    output_cost = (t.output - t.output_audio) * output_rate + t.output_audio * audio_out_rate
    return LLMPrice(quantize_cost(input_cost / MTOK), quantize_cost(output_cost / MTOK))


def _calc(
    provider: str | None, model: str, t: _Tokens, at: datetime | None
) -> tuple[Decimal, Decimal]:
    # genai-prices takes the same nesting: input_tokens holds cache reads and audio,
    # cache_audio_read_tokens lies in both.
    result = calc_price(
        Usage(
            input_tokens=t.input,
            output_tokens=t.output,
            cache_read_tokens=t.cache_read or None,
            cache_write_tokens=t.cache_write or None,
            input_audio_tokens=t.input_audio or None,
            output_audio_tokens=t.output_audio or None,
            cache_audio_read_tokens=t.cache_read_audio or None,
        ),
        model,
        provider_id=provider,
        genai_request_timestamp=at,
    )
    return result.input_price, result.output_price
