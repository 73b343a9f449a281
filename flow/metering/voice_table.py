"""The voice table: what TTS characters, STT audio and phone call legs cost, per vendor
and model, each row with the page it was read from, the day it was checked and the
tier it assumes. :class:`flow.metering.pricing.PriceBook` prices with it; ``flow prices``
lists it; ``FLOW_VOICE_PRICES`` overrides a row."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

OVERRIDE_SOURCE = "override"


@dataclass(frozen=True)
class VoiceRate:
    """One row of the voice table: a vendor's published rate and where it comes from.

    Parameters:
        rates: USD ``per_character`` (TTS), ``per_second`` or ``per_minute`` (STT).
        source_url: the vendor's page the rate was read from.
        checked: the day (``YYYY-MM-DD``) the rate was last compared with that page.
        tier: the plan and mode the rate assumes, most telling first ("streaming, pay as
            you go"); its first part names the row in ``price_source``.
        note: what a reader should know (sources that disagree, and which was chosen).
        override: a negotiated rate from ``FLOW_VOICE_PRICES`` (no source of ours).
    """

    rates: dict[str, Decimal] = field(hash=False)
    source_url: str = ""
    checked: str = ""
    tier: str = ""
    note: str = ""
    override: bool = False

    def price_source(self, key: str) -> str:
        if self.override:
            return OVERRIDE_SOURCE
        return f"voice-table {self.checked} {key} {self.tier.split(',')[0].strip()}"


OPENAI_PRICING = "https://platform.openai.com/docs/pricing"
DEEPGRAM_PRICING = "https://deepgram.com/pricing"
TWILIO_PRICING = "https://www.twilio.com/en-us/voice/pricing/us"

# Keys are ``provider/model``; ``provider/*`` applies to any model of that vendor. A row
# is checked against its vendor's page on the date it gives; `flow prices` lists them.
DEFAULT_VOICE_PRICES: dict[str, VoiceRate] = {
    # OpenAI TTS: $15 / $30 per 1M characters. (gpt-4o-mini-tts bills tokens, not
    # characters, so it has no row: its characters are recorded unpriced.)
    "openai/tts-1": VoiceRate(
        {"per_character": Decimal("0.000015")}, OPENAI_PRICING, "2026-11-28", "standard"
    ),
    "openai/tts-1-hd": VoiceRate(
        {"per_character": Decimal("0.00003")}, OPENAI_PRICING, "2026-11-28", "standard"
    ),
    # OpenAI transcription: whisper-1 $0.006/min. The gpt-4o transcribe models are sold
    # by the token and priced by their tokens when an answer reports usage; these rows
    # (OpenAI's per-minute estimates) price only an answer that reports none.
    "openai/whisper-1": VoiceRate(
        {"per_second": Decimal("0.0001")}, OPENAI_PRICING, "2026-11-28", "standard"
    ),
    "openai/gpt-4o-transcribe": VoiceRate(
        {"per_second": Decimal("0.0001")},
        OPENAI_PRICING,
        "2026-11-28",
        "estimate, $0.006/min",
        note="billed by OpenAI in audio and text tokens; the per-minute figure is its estimate",
    ),
    "openai/gpt-4o-mini-transcribe": VoiceRate(
        {"per_second": Decimal("0.00005")},
        OPENAI_PRICING,
        "2026-11-28",
        "estimate, $0.003/min",
        note="billed by OpenAI in audio and text tokens; the per-minute figure is its estimate",
    ),
    # Deepgram TTS: Aura $0.015 / Aura-2 $0.030 per 1K characters.
    "deepgram/aura": VoiceRate(
        {"per_character": Decimal("0.000015")}, DEEPGRAM_PRICING, "2026-11-28", "pay as you go"
    ),
    "deepgram/aura-2": VoiceRate(
        {"per_character": Decimal("0.00003")}, DEEPGRAM_PRICING, "2026-11-28", "pay as you go"
    ),
    # Deepgram STT, streaming (a bot transcribes live).
    "deepgram/nova-3": VoiceRate(
        {"per_minute": Decimal("0.0048")},
        DEEPGRAM_PRICING,
        "2026-11-28",
        "streaming, pay as you go, monolingual",
        note=(
            "as quoted from this page in May and August 2026: $0.0048 streaming, $0.0043 "
            "pre-recorded (Growth $0.0042 streaming; multilingual $0.0058 streaming); "
            "$0.0077/min was the 2025 streaming price"
        ),
    ),
    "deepgram/nova-2": VoiceRate(
        {"per_minute": Decimal("0.0058")},
        DEEPGRAM_PRICING,
        "2026-11-28",
        "streaming, pay as you go",
        note="not confirmed against the 2026 price list: the streaming rate published before",
    ),
    # Twilio Programmable Voice, US local numbers: receiving and making calls, per
    # started minute.
    "twilio/inbound": VoiceRate(
        {"per_minute": Decimal("0.0085")},
        TWILIO_PRICING,
        "2026-11-28",
        "per started minute, US local, pay as you go",
    ),
    "twilio/outbound": VoiceRate(
        {"per_minute": Decimal("0.014")},
        TWILIO_PRICING,
        "2026-11-28",
        "per started minute, US local, pay as you go",
        note="Twilio's volume-pricing article uses $0.013/min for outbound in its example",
    ),
}
