"""The price of one call, and the most it can cost: what the budget reserves before sending it.

Below the estimate and the label tasks, which both price calls (a label job's escalations at the
stronger target's own price): the estimate builds on the plan, and the plan on the label tasks,
so the worst case of a call lives here rather than in :mod:`pipeline.estimator`.
"""

from __future__ import annotations

from collections.abc import Callable

from .config import Job
from .errors import ConfigError
from .providers.base import Price
from .tokens import count_one

PROMPT_MARGIN = 1.05
PROMPT_OVERHEAD = 32  # tokens a service may add around a prompt (system prompt, chat framing)


def worst_cost_fn(job: Job, price: Price, *, max_tokens: int | None = None) -> Callable[[str], float]:
    """The most one call can cost: every prompt at ``PROMPT_MARGIN × its exact count +
    PROMPT_OVERHEAD`` tokens, every answer at ``max_tokens``."""
    max_tokens = max_tokens or job.provider.max_tokens
    if max_tokens is None:
        raise ConfigError("a cost cap needs provider.max_tokens (the worst case of a call)")
    pp, cp = price.prompt_per_million / 1e6, price.completion_per_million / 1e6

    def worst(prompt: str) -> float:
        return (PROMPT_MARGIN * count_one(prompt) + PROMPT_OVERHEAD) * pp + max_tokens * cp

    return worst
