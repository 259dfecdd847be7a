"""The retry policy, declared once: what is worth retrying, how long to wait, when to give up.

Composed from tenacity's named parts. The runner wraps each call in it and contains no retry
logic of its own; the decision reads the error's ``action`` (:class:`~pipeline.errors.Action`), never
its text.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)
from tenacity.wait import wait_base

from .errors import Action, RateLimited


class wait_retry_after(wait_base):  # noqa: N801 - named like tenacity's own policies
    """Wait what the server's ``Retry-After`` asked for; otherwise defer to ``fallback``."""

    def __init__(self, fallback: wait_base, *, cap: float = 300.0) -> None:
        self.fallback = fallback
        self.cap = cap

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            return min(self.cap, max(0.0, exc.retry_after))
        return float(self.fallback(retry_state))


def worth_retrying(exc: BaseException) -> bool:
    return getattr(exc, "action", None) is Action.RETRY


def retry_policy(
    max_attempts: int,
    *,
    initial_wait: float = 0.5,
    max_wait: float = 30.0,
    before_sleep: Callable[[RetryCallState], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
) -> AsyncRetrying:
    """Errors whose action is ``Action.RETRY``: exponential backoff and jitter, honouring Retry-After."""
    return AsyncRetrying(
        stop=stop_after_attempt(max_attempts),
        wait=wait_retry_after(
            wait_exponential_jitter(multiplier=initial_wait, max=max_wait, jitter=initial_wait)
        ),
        retry=retry_if_exception(worth_retrying),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
