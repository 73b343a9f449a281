"""Prices worked by hand from the vendors' published rates."""

from decimal import Decimal

from flow.metering.pricing import PriceBook, gross_input_tokens


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
    assert PriceBook().tts("openai", "tts-1", 120) == Decimal("0.0018")
    # Deepgram Aura-2 voices by family: $0.030 per 1K characters -> 100 chars = 0.003
    assert PriceBook().tts("deepgram", "aura-2-thalia-en", 100) == Decimal("0.003")


def test_stt_is_priced_per_second() -> None:
    # Deepgram Nova-3 streaming: $0.0077/min -> 30 s = 0.00385
    assert PriceBook().stt("deepgram", "nova-3", Decimal("30")) == Decimal("0.00385")
    # OpenAI whisper-1: $0.006/min -> 12.5 s = 0.00125
    assert PriceBook().stt("openai", "whisper-1", Decimal("12.5")) == Decimal("0.00125")


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
    assert book.tts("cartesia", "sonic-2", 1000) == Decimal("0.04")
