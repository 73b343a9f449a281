"""The offline tiktoken encodings are tiktoken's own (hash-checked) and count as OpenAI does."""

from pathlib import Path

import pytest

from flow.metering.tokenizer import count_message_tokens, count_tokens, encoding_for, preload


def test_o200k_encodes_known_ids() -> None:
    # Token ids published for o200k_base: "hello world" -> [24912, 2375]
    assert encoding_for("gpt-4o-mini").encode("hello world") == [24912, 2375]
    assert count_tokens("hello world", "gpt-4o-mini") == 2


def test_chat_prompt_counts_framing_tokens() -> None:
    # 3 priming + (3 framing + "user" 1 + "hello" 1) = 8
    assert count_message_tokens([{"role": "user", "content": "hello"}], "gpt-4o-mini") == 8


def test_preload_loads_an_encoding_on_disk() -> None:
    assert preload("gpt-4o-mini")
    assert encoding_for.cache_info().currsize >= 1


def test_preload_fetches_nothing_that_is_not_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    assert not preload("gpt-4o-mini")  # its file is not in this cache
    assert not preload("davinci")  # an encoding Flow does not install
    assert list(tmp_path.iterdir()) == []
