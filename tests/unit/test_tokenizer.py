"""The offline tiktoken encodings are tiktoken's own (hash-checked) and count as OpenAI does."""

from flow.metering.tokenizer import count_message_tokens, count_tokens, encoding_for


def test_o200k_encodes_known_ids() -> None:
    # Token ids published for o200k_base: "hello world" -> [24912, 2375]
    assert encoding_for("gpt-4o-mini").encode("hello world") == [24912, 2375]
    assert count_tokens("hello world", "gpt-4o-mini") == 2


def test_chat_prompt_counts_framing_tokens() -> None:
    # 3 priming + (3 framing + "user" 1 + "hello" 1) = 8
    assert count_message_tokens([{"role": "user", "content": "hello"}], "gpt-4o-mini") == 8
