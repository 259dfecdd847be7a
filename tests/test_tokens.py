"""Exact offline token counts, pinned to known values.

The expected counts were produced by two independent implementations that agree on every string:
toktok-rs (which we ship) and quicktok-v1 0.4.0 (installed aside, not a dependency), both carrying
OpenAI's published o200k_base / cl100k_base vocabularies. "Hello, world!" → 4 tokens in o200k_base
is OpenAI's own documented example ([13225, 11, 2375, 0]).
"""

from __future__ import annotations

import pytest

from pipeline.tokens import count_one, count_tokens

KNOWN = [
    # text, o200k_base, cl100k_base
    ("Hello, world!", 4, 4),
    ("The quick brown fox jumps over the lazy dog.", 10, 10),
    ("你好，世界！", 4, 7),
    ("人工智能正在改变世界。", 6, 12),
    ("这个产品质量很好，物流也很快，推荐购买！", 13, 25),
    ("Summarise in one line: 电池续航一般，但屏幕很清晰。", 19, 30),
]


@pytest.mark.parametrize(("text", "o200k", "cl100k"), KNOWN)
def test_known_counts(text: str, o200k: int, cl100k: int) -> None:
    assert count_one(text) == o200k
    assert count_one(text, "cl100k_base") == cl100k


def test_batch_keeps_order_and_matches_single_counts() -> None:
    texts = [t for t, _, _ in KNOWN] * 50
    assert count_tokens(texts) == [count_one(t) for t in texts]
    assert count_tokens([]) == []


def test_characters_over_four_would_undercount_chinese() -> None:
    text = "这个产品质量很好，物流也很快，推荐购买！"
    assert len(text) / 4 < 0.5 * count_one(text)  # why a real tokenizer is needed
