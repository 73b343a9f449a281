"""Prices worked by hand from the vendors' published rates."""

from decimal import Decimal

import pytest

from flow.metering.pricing import LLMPrice, PriceBook, VoicePrice, gross_input_tokens


def _cost(price: LLMPrice | VoicePrice | None) -> Decimal | None:
    if isinstance(price, LLMPrice):
        return price.total_cost_usd
    return None if price is None else price.cost_usd


def test_gpt_4o_mini_prices_cached_tokens_at_the_cached_rate() -> None:
    # $0.15/M input, $0.075/M cached input, $0.60/M output.
    # 1000 prompt tokens of which 200 cached: 800 * 0.15/M + 200 * 0.075/M = 0.000135
    # 500 output tokens: 500 * 0.60/M = 0.0003
    price = PriceBook().llm(
        "openai", "gpt-4o-mini", input_tokens=1000, output_tokens=500, cache_read_tokens=200
    )
    assert price is not None
    assert price.input_cost_usd == Decimal("0.000135")
    assert price.output_cost_usd == Decimal("0.0003")
    assert price.total_cost_usd == Decimal("0.000435")


def test_anthropic_net_prompt_is_converted_to_gross_before_pricing() -> None:
    # Anthropic reports 800 uncached prompt tokens plus 200 cache reads (net).
    gross = gross_input_tokens("anthropic", 800, cache_read_tokens=200)
    assert gross == 1000
    # Claude 3.5 Haiku: $0.80/M input, $0.08/M cache read, $4/M output.
    # 800 * 0.8/M + 200 * 0.08/M = 0.00064 + 0.000016 = 0.000656; 500 * 4/M = 0.002
    price = PriceBook().llm(
        "anthropic",
        "claude-3-5-haiku-20241022",
        input_tokens=gross,
        output_tokens=500,
        cache_read_tokens=200,
    )
    assert price is not None
    assert price.input_cost_usd == Decimal("0.000656")
    assert price.total_cost_usd == Decimal("0.002656")


def test_openai_prompt_is_already_gross() -> None:
    assert gross_input_tokens("openai", 1000, cache_read_tokens=200) == 1000


def test_tts_is_priced_per_character() -> None:
    # OpenAI tts-1: $15 per 1M characters -> 120 characters = 0.0018
    assert _cost(PriceBook().tts("openai", "tts-1", 120)) == Decimal("0.0018")
    # Deepgram Aura-2 voices by family: $0.030 per 1K characters -> 100 chars = 0.003
    assert _cost(PriceBook().tts("deepgram", "aura-2-thalia-en", 100)) == Decimal("0.003")


def test_stt_is_priced_per_second() -> None:
    # Deepgram Nova-3 streaming, pay as you go: $0.0048/min -> 30 s = 0.0024
    assert _cost(PriceBook().stt("deepgram", "nova-3", Decimal("30"))) == Decimal("0.0024")
    # OpenAI whisper-1: $0.006/min -> 12.5 s = 0.00125
    assert _cost(PriceBook().stt("openai", "whisper-1", Decimal("12.5"))) == Decimal("0.00125")


def test_unknown_models_are_unpriced_not_zero() -> None:
    book = PriceBook()
    assert book.llm("openai", "gpt-unknown-9", input_tokens=10, output_tokens=10) is None
    assert book.tts("acme", "voice-1", 10) is None
    assert book.stt("acme", "ears-1", Decimal(1)) is None


def test_negotiated_override_wins_over_list_price() -> None:
    book = PriceBook(
        llm_overrides={
            "gpt-4o-mini": {
                "input": Decimal("0.10"),
                "output": Decimal("0.40"),
                "cache_read": Decimal("0.05"),
            }
        }
    )
    price = book.llm(
        "openai", "gpt-4o-mini", input_tokens=1000, output_tokens=500, cache_read_tokens=200
    )
    # 800 * 0.10/M + 200 * 0.05/M = 0.00009; 500 * 0.40/M = 0.0002
    assert price is not None
    assert price.input_cost_usd == Decimal("0.00009")
    assert price.output_cost_usd == Decimal("0.0002")


def test_voice_price_overrides_apply_per_provider_model() -> None:
    book = PriceBook(voice_prices={"cartesia/sonic-2": {"per_character": Decimal("0.00004")}})
    assert _cost(book.tts("cartesia", "sonic-2", 1000)) == Decimal("0.04")


# gpt-realtime as OpenAI publishes it (and genai-prices holds it), USD per 1M tokens:
# text in $4, cached text in $0.40, text out $16; audio in $32, cached audio in $0.40,
# audio out $64.
REALTIME_CALL = {
    "input_tokens": 12_480,  # gross: text and audio, cached and not
    "cache_read_tokens": 8_064,  # cached text and cached audio
    "input_audio_tokens": 9_216,  # cached audio included
    "cache_read_audio_tokens": 6_400,
    "output_tokens": 1_905,
    "output_audio_tokens": 1_536,
}


def test_a_realtime_call_is_priced_per_modality_from_openais_published_rates() -> None:
    # Input: 12,480 tokens = 9,216 audio (6,400 cached) + 3,264 text (1,664 cached).
    #   uncached text   1,600 * $4    = 0.006400
    #   cached text     1,664 * $0.40 = 0.0006656
    #   uncached audio  2,816 * $32   = 0.090112
    #   cached audio    6,400 * $0.40 = 0.00256
    #   input                          = 0.0997376
    # Output: 1,905 tokens = 1,536 audio + 369 text.
    #   text              369 * $16   = 0.005904
    #   audio           1,536 * $64   = 0.098304
    #   output                         = 0.104208
    price = PriceBook().llm("openai", "gpt-realtime", **REALTIME_CALL)
    assert price is not None
    assert abs(price.input_cost_usd - Decimal("0.0997376")) <= Decimal("1e-8")
    assert abs(price.output_cost_usd - Decimal("0.104208")) <= Decimal("1e-8")
    assert abs(price.total_cost_usd - Decimal("0.2039456")) <= Decimal("1e-8")
    # The same tokens priced as text: 4,416 * $4 + 8,064 * $0.40 + 1,905 * $16 = 0.0513696,
    # a quarter of what the call cost.
    text_only = PriceBook().llm(
        "openai",
        "gpt-realtime",
        input_tokens=12_480,
        cache_read_tokens=8_064,
        output_tokens=1_905,
    )
    assert text_only is not None and text_only.total_cost_usd == Decimal("0.0513696")


def test_negotiated_audio_rates_apply_per_modality_and_fall_back_to_their_parents() -> None:
    rates = {
        "input": Decimal("3"),
        "cache_read": Decimal("0.3"),
        "output": Decimal("12"),
        "input_audio": Decimal("24"),
        "cache_read_audio": Decimal("0.5"),
        "output_audio": Decimal("48"),
    }
    price = PriceBook(llm_overrides={"gpt-realtime": rates}).llm(
        "openai", "gpt-realtime", **REALTIME_CALL
    )
    # 1,600 * 3 + 1,664 * 0.3 + 2,816 * 24 + 6,400 * 0.5 = 76,083.2 per 1M = 0.0760832
    # 369 * 12 + 1,536 * 48 = 78,156 per 1M = 0.078156
    assert price is not None
    assert price.input_cost_usd == Decimal("0.0760832")
    assert price.output_cost_usd == Decimal("0.078156")
    # Without audio rates, audio is billed at the text rates; without cache_read_audio,
    # cached audio at the input_audio rate (no discount that was not negotiated).
    text_rates = {"input": Decimal("3"), "cache_read": Decimal("0.3"), "output": Decimal("12")}
    price = PriceBook(llm_overrides={"gpt-realtime": text_rates}).llm(
        "openai", "gpt-realtime", **REALTIME_CALL
    )
    # 1,600 * 3 + 1,664 * 0.3 + 2,816 * 3 + 6,400 * 3 = 32,947.2; 1,905 * 12 = 22,860
    assert price is not None
    assert price.input_cost_usd == Decimal("0.0329472")
    assert price.output_cost_usd == Decimal("0.02286")
    no_audio_cache = {**rates}
    del no_audio_cache["cache_read_audio"]
    price = PriceBook(llm_overrides={"gpt-realtime": no_audio_cache}).llm(
        "openai", "gpt-realtime", **REALTIME_CALL
    )
    # 1,600 * 3 + 1,664 * 0.3 + 2,816 * 24 + 6,400 * 24 = 226,483.2
    assert price is not None
    assert price.input_cost_usd == Decimal("0.2264832")


def test_audio_overrides_are_read_from_the_environment_and_misspelt_rates_refused() -> None:
    from flow.config import Settings

    settings = Settings(
        flow_price_overrides='{"gpt-realtime": {"input": "3", "input_audio": "24"}}'
    )
    assert PriceBook.from_settings(settings).llm(
        "openai", "gpt-realtime", input_tokens=100, input_audio_tokens=100, output_tokens=0
    ) == PriceBook(llm_overrides={"gpt-realtime": {"input_audio": Decimal(24)}}).llm(
        "openai", "gpt-realtime", input_tokens=100, input_audio_tokens=100, output_tokens=0
    )
    with pytest.raises(ValueError, match=r"unknown rates \['audio_input'\]"):
        Settings(flow_price_overrides='{"gpt-realtime": {"audio_input": "24"}}')


def test_cached_text_beside_uncached_audio_is_priced_by_hand() -> None:
    # A cut-off gpt-realtime response: cached text, uncached audio, no cached audio.
    price = PriceBook().llm(
        "openai",
        "gpt-realtime",
        input_tokens=310,
        cache_read_tokens=64,
        input_audio_tokens=100,
        cache_read_audio_tokens=0,
        output_tokens=29,
        output_audio_tokens=25,
    )
    assert price is not None
    # (146 text * $4 + 64 cached * $0.40 + 100 audio * $32) / 1M; (4 * $16 + 25 * $64) / 1M
    assert (price.input_cost_usd, price.output_cost_usd) == (
        Decimal("0.0038096"),
        Decimal("0.001664"),
    )


def test_transcription_is_priced_by_its_tokens_when_it_has_them_else_by_its_seconds() -> None:
    book = PriceBook()
    by_tokens = book.stt(
        "openai",
        "gpt-4o-transcribe",
        Decimal("2.5"),
        input_tokens=31,
        input_audio_tokens=25,
        output_tokens=7,
    )
    # 6 text * $2.50 + 25 audio * $6 in, 7 * $10 out, per 1M tokens.
    assert isinstance(by_tokens, LLMPrice)
    assert (by_tokens.input_cost_usd, by_tokens.output_cost_usd) == (
        Decimal("0.000165"),
        Decimal("0.00007"),
    )
    assert by_tokens.source is not None and by_tokens.source.startswith("genai-prices ")
    assert _cost(book.stt("openai", "gpt-4o-transcribe", Decimal("2.5"))) == Decimal("0.00025")
    assert book.stt("openai", "made-up-transcribe", Decimal(1), input_tokens=5) is None


def test_a_phone_call_leg_is_billed_per_started_minute() -> None:
    book = PriceBook()
    # Twilio: $0.0085 a minute answered, $0.014 placed; every started minute counts.
    assert _cost(book.telephony("twilio", "inbound", Decimal("0.001"))) == Decimal("0.0085")
    assert _cost(book.telephony("twilio", "inbound", Decimal("60.000"))) == Decimal("0.0085")
    assert _cost(book.telephony("twilio", "inbound", Decimal("60.001"))) == Decimal("0.017")
    assert _cost(book.telephony("twilio", "outbound", Decimal("125.5"))) == Decimal("0.042")
    assert _cost(book.telephony("twilio", "outbound", Decimal(0))) == Decimal(0)
    assert _cost(book.telephony("vonage", "inbound", Decimal(30))) is None
    negotiated = PriceBook(voice_prices={"twilio/inbound": {"per_minute": Decimal("0.004")}})
    assert _cost(negotiated.telephony("twilio", "inbound", Decimal("61"))) == Decimal("0.008")
    exact = PriceBook(voice_prices={"twilio/outbound": {"per_second": Decimal("0.0002")}})
    assert _cost(exact.telephony("twilio", "outbound", Decimal("61"))) == Decimal("0.0122")
