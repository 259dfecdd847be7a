"""Exact offline token counts, pinned to known values.

The expected counts were produced by two independent implementations that agree on every string:
toktok-rs (which we ship) and quicktok-v1 0.4.0 (installed aside, not a dependency), both carrying
OpenAI's published o200k_base / cl100k_base vocabularies. "Hello, world!" → 4 tokens in o200k_base
is OpenAI's own documented example ([13225, 11, 2375, 0]).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
import json, os, sys
from pipeline import tokens

def rss_mb(pid="self"):
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024

start = rss_mb()
counts = tokens.count_tokens(["Hello, world!"] * 3)
child = tokens._counter._proc  # the test looks at the package's own counting process
held = rss_mb(child.pid)
tokens.release()
print(json.dumps({"counts": counts, "grew": rss_mb() - start, "held": held, "ended": child.poll() is not None,
                  "again": tokens.count_tokens(["Hello, world!"])}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
def test_bulk_counts_hold_the_vocabulary_in_a_process_that_release_ends() -> None:
    out = subprocess.run([sys.executable, "-c", RSS_AFTER], capture_output=True, text=True, check=True).stdout
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["counts"] == [4, 4, 4] and seen["again"] == [4]  # counted again after release
    assert seen["held"] > 40, seen  # o200k's tables: ~60 MB, in the counting process
    assert seen["grew"] < 20, seen  # and not in this one
    assert seen["ended"]  # released: the process, and its memory, gone


ONE_HERE = """
import json
from pipeline import tokens

tokens.preload()
child = tokens._counter._proc
one = tokens.count_one("Hello, world!")  # loaded here: the counting process is ended
print(json.dumps({"one": one, "ended": child.poll() is not None, "counter": tokens._counter is not None,
                  "bulk": tokens.count_tokens(["Hello, world!", "你好，世界！"])}))
"""


def test_a_single_count_loads_here_and_ends_the_counting_process() -> None:
    out = subprocess.run([sys.executable, "-c", ONE_HERE], capture_output=True, text=True, check=True).stdout
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen == {"one": 4, "ended": True, "counter": False, "bulk": [4, 4]}


def test_preload_here_loads_in_the_background_and_counting_waits_for_it() -> None:
    preload(here=True)
    preload(here=True)  # a second call while loading starts nothing more
    texts = [t for t, _, _ in KNOWN]
    assert count_tokens(texts) == [o200k for _, o200k, _ in KNOWN]
    assert tokens._loading is None


def test_an_unknown_encoding_is_refused_as_toktok_refuses_it() -> None:
    release()
    with pytest.raises(KeyError):
        count_tokens(["x"], "no_such_encoding")
    with pytest.raises(KeyError):
        count_one("x", "no_such_encoding")
