"""Prices for every metered unit, in Decimal USD.

- LLM tokens: negotiated per-model overrides first (``FLOW_PRICE_OVERRIDES``), then
  genai-prices (historical prices, cached tokens at the cached rate). Each modality at
  its own rate: speech-to-speech models bill audio tokens at several times the text
  rate, and cached audio at a cached-audio rate.
- TTS characters and STT seconds: a small table of our own for voice vendors
  (genai-prices does not cover Deepgram or Cartesia), overridable per ``provider/model``
  with ``FLOW_VOICE_PRICES``.
- STT that reports tokens (OpenAI's ``gpt-4o-transcribe`` and ``gpt-4o-mini-transcribe``
  are sold by the token) is priced by its tokens, like an LLM.
- Phone call legs: the same table (``twilio/inbound``, ``twilio/outbound``), per minute;
  a leg is billed per started minute, as Twilio bills it.

Every price says where it came from (``price_source`` on the usage event): the
genai-prices version and the model id it matched (``genai-prices 0.2.3
openai/gpt-4o-mini``), the voice-table row with the date it was checked against its
source and the tier it assumes (``voice-table 2026-11-28 deepgram/nova-3 streaming``), or
``override`` for a negotiated price from the settings.

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
from typing import Required, TypedDict, Unpack

from genai_prices import Usage, calc_price
from genai_prices import __version__ as GENAI_PRICES_VERSION

from flow.config import Settings
from flow.metering.events import quantize_cost
from flow.metering.voice_table import DEFAULT_VOICE_PRICES, OVERRIDE_SOURCE, VoiceRate

log = logging.getLogger(__name__)

MTOK = Decimal(1_000_000)

# Providers whose usage reports prompt tokens NET of cache reads/writes (Pipecat passes
# the vendor's numbers through): Anthropic's Messages API and Bedrock's Converse API.
NET_PROMPT_PROVIDERS = frozenset({"anthropic", "aws", "bedrock", "aws_bedrock"})

GENAI_PRICES_SOURCE = f"genai-prices {GENAI_PRICES_VERSION}"


def gross_input_tokens(
    provider: str, prompt_tokens: int, cache_read_tokens: int = 0, cache_write_tokens: int = 0
) -> int:
    """Prompt tokens in the gross convention (cached tokens included)."""
    if provider.lower() in NET_PROMPT_PROVIDERS:
        return prompt_tokens + cache_read_tokens + cache_write_tokens
    return prompt_tokens


@dataclass(frozen=True)
class LLMPrice:
    """A price split the way vendors bill it: input (prompt) and output (completion),
    with where it came from (``None`` only for a price built by hand)."""

    input_cost_usd: Decimal
    output_cost_usd: Decimal
    source: str | None = None

    @property
    def total_cost_usd(self) -> Decimal:
        return self.input_cost_usd + self.output_cost_usd


@dataclass(frozen=True)
class VoicePrice:
    """What TTS characters or STT audio cost, and the voice-table row (or override) that
    priced them."""

    cost_usd: Decimal
    source: str


def cost_fields(price: LLMPrice | VoicePrice | None) -> dict[str, Decimal | str | None]:
    """A price as the usage event's cost fields and ``price_source``. A voice price is
    all input: TTS bills the characters it is given, STT the audio it is sent."""
    if price is None:
        return {"input_cost_usd": None, "output_cost_usd": None, "price_source": None}
    if isinstance(price, LLMPrice):
        return {
            "input_cost_usd": price.input_cost_usd,
            "output_cost_usd": price.output_cost_usd,
            "price_source": price.source,
        }
    return {
        "input_cost_usd": price.cost_usd,
        "output_cost_usd": Decimal(0),
        "price_source": price.source,
    }


class TokenCounts(TypedDict, total=False):
    """One inference's token counts, as the ledger names them: the input GROSS (cache
    reads and writes inside it), the audio counts parts of the totals."""

    input_tokens: Required[int]
    output_tokens: Required[int]
    cache_read_tokens: int
    cache_write_tokens: int
    input_audio_tokens: int
    output_audio_tokens: int
    cache_read_audio_tokens: int


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
        self._voice.update(
            {k.lower(): VoiceRate(v, override=True) for k, v in (voice_prices or {}).items()}
        )

    @property
    def llm_overrides(self) -> dict[str, dict[str, Decimal]]:
        """The negotiated LLM rates in effect, USD per million tokens, by model."""
        return dict(self._llm_overrides)

    @property
    def voice_rates(self) -> dict[str, VoiceRate]:
        """Every voice row in effect (the table, with overrides in their place)."""
        return dict(self._voice)

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
        at: datetime | None = None,
        **counts: Unpack[TokenCounts],
    ) -> LLMPrice | None:
        """Price one inference given GROSS input tokens; None when the model is unknown.
        The audio counts are parts of the totals, each priced at its own rate."""
        tokens = _Tokens(
            counts["input_tokens"],
            counts["output_tokens"],
            counts.get("cache_read_tokens", 0),
            counts.get("cache_write_tokens", 0),
            counts.get("input_audio_tokens", 0),
            counts.get("output_audio_tokens", 0),
            counts.get("cache_read_audio_tokens", 0),
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
        return LLMPrice(quantize_cost(calc[0]), quantize_cost(calc[1]), calc[2])

    # --- voice ---------------------------------------------------------------
    def voice_rate(self, provider: str, model: str) -> tuple[str, VoiceRate] | None:
        """The row that prices ``provider/model``, with its key: exact, else the longest
        model family (Deepgram voices are named ``aura-2-thalia-en``), else
        ``provider/*``."""
        provider, model = provider.lower(), model.lower()
        key = f"{provider}/{model}"
        if key in self._voice:
            return key, self._voice[key]
        families = [
            key
            for key in self._voice
            if key.startswith(provider + "/") and model.startswith(key.split("/", 1)[1] + "-")
        ]
        key = max(families, key=len) if families else f"{provider}/*"
        return (key, self._voice[key]) if key in self._voice else None

    def tts(self, provider: str, model: str, characters: int) -> VoicePrice | None:
        found = self.voice_rate(provider, model)
        if found is None or "per_character" not in found[1].rates:
            log.warning("no TTS price for %s/%s: recorded as unpriced", provider, model)
            return None
        key, row = found
        cost = quantize_cost(characters * row.rates["per_character"])
        return VoicePrice(cost, row.price_source(key))

    def stt(
        self,
        provider: str,
        model: str,
        audio_seconds: Decimal,
        *,
        input_tokens: int = 0,
        input_audio_tokens: int = 0,
        output_tokens: int = 0,
    ) -> LLMPrice | VoicePrice | None:
        """Price one transcription the way it is sold: by its tokens when the vendor
        reported them (OpenAI's ``gpt-4o-transcribe`` family: audio and text in, text
        out, each at its rate), else by its seconds (``whisper-1``, Deepgram)."""
        if input_tokens or output_tokens:
            return self.llm(
                provider,
                model,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                input_audio_tokens=input_audio_tokens,
            )
        found = self.voice_rate(provider, model)
        cost = _audio_cost(found[1].rates, audio_seconds) if found else None
        if found is None or cost is None:
            log.warning("no STT price for %s/%s: recorded as unpriced", provider, model)
            return None
        key, row = found
        return VoicePrice(quantize_cost(cost), row.price_source(key))

    def telephony(self, provider: str, model: str, seconds: Decimal) -> VoicePrice | None:
        """A phone call leg of ``seconds``: per started minute at a ``per_minute`` rate
        (``seconds`` exactly at a ``per_second`` one)."""
        found = self.voice_rate(provider, model)
        rates = found[1].rates if found else {}
        if found is None or not ({"per_minute", "per_second"} & rates.keys()):
            log.warning("no telephony price for %s/%s: recorded as unpriced", provider, model)
            return None
        if "per_minute" in rates:
            cost = billed_minutes(seconds) * rates["per_minute"]
        else:
            cost = seconds * rates["per_second"]
        key, row = found
        return VoicePrice(quantize_cost(cost), row.price_source(key))


def _audio_cost(rates: dict[str, Decimal], audio_seconds: Decimal) -> Decimal | None:
    if "per_second" in rates:
        return audio_seconds * rates["per_second"]
    if "per_minute" in rates:
        return audio_seconds * rates["per_minute"] / 60
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
    return LLMPrice(
        quantize_cost(input_cost / MTOK), quantize_cost(output_cost / MTOK), OVERRIDE_SOURCE
    )


def _calc(
    provider: str | None, model: str, t: _Tokens, at: datetime | None
) -> tuple[Decimal, Decimal, str]:
    """Input and output prices, and the source: the package version and the provider
    and model ids it matched."""
    # genai-prices takes the same nesting: input_tokens holds cache reads and audio,
    # cache_audio_read_tokens lies in both. Every count is given, zeros included: it
    # refuses to guess the cached audio of usage with both cache reads and audio.
    result = calc_price(
        Usage(
            input_tokens=t.input,
            output_tokens=t.output,
            cache_read_tokens=t.cache_read,
            cache_write_tokens=t.cache_write,
            input_audio_tokens=t.input_audio,
            output_audio_tokens=t.output_audio,
            cache_audio_read_tokens=t.cache_read_audio,
        ),
        model,
        provider_id=provider,
        genai_request_timestamp=at,
    )
    source = f"{GENAI_PRICES_SOURCE} {result.provider.id}/{result.model.id}"
    return result.input_price, result.output_price, source
