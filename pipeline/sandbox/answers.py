"""Deterministic answers and token counts, so a rerun sees the same content, tokens and cost.

Tokens: ``prompt_tokens`` is the exact o200k count plus a fixed overhead (the agent's hidden
system prompt); ``completion_tokens`` is ``20 + h % 201`` from a hash of (target, prompt), capped
at ``max_tokens``. The content is readable filler and is not exactly that many tokens long.

Labelling targets (MOMO 301 and 302, every relay model) answer label prompts through a
:class:`~.labeller.Labeller`; any other prompt gets prose.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Protocol

import toktok

__all__ = ["PROMPT_OVERHEAD", "answer", "completion_tokens", "count_tokens", "stable_hash"]

ENCODING = "o200k_base"
PROMPT_OVERHEAD = 7
_NO_LIMIT = 2**62

_FILLER = (
    "the", "result", "depends", "on", "context", "and", "a", "careful", "reading", "shows", "that",
    "several", "factors", "matter", "here", "first", "second", "in", "short", "this", "means", "we",
    "can", "say", "with", "some", "confidence", "overall", "picture", "is", "clear", "enough", "for",
    "practical", "purposes", "details", "vary", "by", "case", "example", "note", "also",
)


def stable_hash(*parts: object) -> int:
    """A 64-bit hash of ``parts`` that is the same in every process (unlike ``hash``)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@lru_cache(maxsize=65536)
def count_tokens(text: str) -> int:
    """Exact o200k_base token count (cached: batch jobs resend the same prompts on retries).

    ``truncate`` with no real limit returns the same exact count as ``batch_count`` at a fraction of
    the cost for one text (~0.5 µs instead of ~30 µs of per-batch set-up): this is the hot path.
    """
    return toktok.truncate(text, _NO_LIMIT, ENCODING)[1]


def completion_tokens(target: object, prompt: str, max_tokens: int | None) -> int:
    n = 20 + stable_hash("completion", target, prompt) % 201
    return n if max_tokens is None else min(n, max_tokens)


class LabelAnswers(Protocol):
    """What answers label prompts (:class:`~.labeller.Labeller`, which builds on this module)."""

    def answer(self, target: object, prompt: str, temperature: float, n: int) -> str | None:
        """A label reply, or None when the prompt asks for no label."""


def answer(target: object, prompt: str, temperature: float, n: int, *,
           labeller: LabelAnswers | None = None) -> str:
    """The content of a reply from ``target`` (an agent id or a model name); a labelling target
    passes its ``labeller``, which answers the prompts that ask for a label."""
    labelled = labeller.answer(target, prompt, temperature, n) if labeller is not None else None
    return labelled if labelled is not None else _prose(target, prompt, temperature)


def _prose(target: object, prompt: str, temperature: float) -> str:
    h = stable_hash("prose", target, prompt, round(temperature, 3))
    count = 12 + h % 40
    start, step = h % len(_FILLER), 1 + (h >> 8) % 5
    words = [_FILLER[(start + i * step) % len(_FILLER)] for i in range(count)]
    head = " ".join(prompt.split())
    head = head if len(head) <= 40 else head[:40] + "…"
    return f"Answer to: {head}\n\n{' '.join(words).capitalize()}."
