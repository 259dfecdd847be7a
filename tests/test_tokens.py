"""Exact offline token counts, pinned to known values.

The expected counts were produced by two independent implementations that agree on every string:
toktok-rs (which we ship) and quicktok-v1 0.4.0 (installed aside, not a dependency), both carrying
OpenAI's published o200k_base / cl100k_base vocabularies. "Hello, world!" → 4 tokens in o200k_base
is OpenAI's own documented example ([13225, 11, 2375, 0]).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import toktok

from pipeline import tokens
from pipeline.tokens import count_one, count_tokens, preload, release

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


RSS_AFTER = """
import sys, toktok
from pipeline import tokens

def rss_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024

tokens.count_one("warm")
loaded = rss_mb()
tokens.release()
print(loaded - rss_mb(), len(toktok._CACHE))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
def test_release_gives_the_vocabulary_back_and_counting_still_works() -> None:
    out = subprocess.run([sys.executable, "-c", RSS_AFTER], capture_output=True, text=True, check=True).stdout
    freed_mb, cached = out.split()
    assert int(cached) == 0
    assert float(freed_mb) > 20, freed_mb  # o200k's tables: ~45 MB back to the system here
    release()
    assert count_one("Hello, world!") == 4  # loaded again on demand


def test_preload_loads_in_the_background_and_counting_waits_for_it() -> None:
    release()
    preload()
    preload()  # a second call while loading starts nothing more
    texts = [t for t, _, _ in KNOWN]
    assert count_tokens(texts) == [o200k for _, o200k, _ in KNOWN]
    assert tokens._loading is None
    assert "o200k_base" in {name for name, _ in toktok._CACHE}
