"""The retry policy, declared once: what is worth retrying, how long to wait, when to give up.

Composed from tenacity's named parts. The runner wraps each call in it and contains no retry
logic of its own; the decision reads the error's ``action`` (:class:`~pipeline.errors.Action`), never
its text.

A 429 is not the row's failure but the server's pace: the rate limiter has already slowed
everyone down (and, without a ``Retry-After``, holds every request back until a probe gets
through), so a rate-limited row waits in the limiter, not in its own backoff, and does not use up
``max_attempts``. It gives up on 429s only after ``rate_limited_for`` seconds, which the limiter
sets to outlast any window it knows of. A relay's saturated upstream is busy too (``busy``), but
says nothing of our pace: that row backs off on its own, and does not use up ``max_attempts`` either.
Its backoff is its own (:func:`busy_backoff`): shorter than an error's, with full jitter, and counted
in the job's time (its "minute", ``limits.window_seconds``), as the limiter's pacing is: another
channel or a moment of the upstream's capacity is often a second away, and an error's 0.5, 1, 2 s
held the row's slot far longer than the calls around it took.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable

import anyio
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    wait_exponential_jitter,
    wait_random_exponential,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from .errors import Action, RateLimited


def _rate_limited(retry_state: RetryCallState) -> RateLimited | None:
    outcome = retry_state.outcome
    exc = outcome.exception() if outcome is not None else None
    return exc if isinstance(exc, RateLimited) else None


def _busy(retry_state: RetryCallState) -> bool:
    outcome = retry_state.outcome
    exc = outcome.exception() if outcome is not None else None
    return bool(getattr(exc, "busy", False))


class wait_retry_after(wait_base):  # noqa: N801 - named like tenacity's own policies
    """After a 429, wait what ``Retry-After`` asked for (or nothing: the limiter paces the retry);
    otherwise defer to ``fallback``."""

    def __init__(self, fallback: wait_base, *, cap: float = 300.0) -> None:
        self.fallback = fallback
        self.cap = cap

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = _rate_limited(retry_state)
        if exc is not None:
            return min(self.cap, max(0.0, exc.retry_after or 0.0))
        return float(self.fallback(retry_state))


class wait_if_busy(wait_base):  # noqa: N801 - named like tenacity's own policies
    """After a busy server's refusal that is not a 429 for our pace (a relay's saturated upstream),
    wait as ``busy`` says; otherwise defer to ``otherwise``."""

    def __init__(self, busy: wait_base, otherwise: wait_base) -> None:
        self.busy = busy
        self.otherwise = otherwise

    def __call__(self, retry_state: RetryCallState) -> float:
        if _busy(retry_state) and _rate_limited(retry_state) is None:
            return float(self.busy(retry_state))
        return float(self.otherwise(retry_state))


def busy_backoff(window: float) -> tuple[float, float]:
    """(first, longest) wait of a call refused by a busy upstream: half a second and eight seconds
    of the job's minute (``window`` seconds), so time scaled down for tests and benchmarks scales
    them too."""
    second = window / 60
    return 0.5 * second, 8 * second


class stop_after_failures(stop_base):  # noqa: N801 - named like tenacity's own policies
    """Stop after ``max_attempts`` attempts that failed other than by a busy server (a 429, a relay's
    saturated upstream), or once a busy server alone has kept the call retrying for
    ``rate_limited_for`` seconds."""

    def __init__(self, max_attempts: int, rate_limited_for: float) -> None:
        self.max_attempts = max_attempts
        self.rate_limited_for = rate_limited_for
        # 429s per call so far; keyed weakly by the call's state, so one policy may serve many calls
        self._rate_limited: weakref.WeakKeyDictionary[RetryCallState, int] = weakref.WeakKeyDictionary()

    def __call__(self, retry_state: RetryCallState) -> bool:
        if _busy(retry_state):
            self._rate_limited[retry_state] = self._rate_limited.get(retry_state, 0) + 1
            return (retry_state.seconds_since_start or 0.0) >= self.rate_limited_for
        failures = retry_state.attempt_number - self._rate_limited.get(retry_state, 0)
        return failures >= self.max_attempts


def worth_retrying(exc: BaseException) -> bool:
    return getattr(exc, "action", None) is Action.RETRY


def retry_policy(
    max_attempts: int,
    *,
    initial_wait: float = 0.5,
    max_wait: float = 30.0,
    rate_limited_for: float = 300.0,
    busy_wait: tuple[float, float] = busy_backoff(60.0),
    before_sleep: Callable[[RetryCallState], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
) -> AsyncRetrying:
    """Errors whose action is ``Action.RETRY``: exponential backoff and jitter; 429s as the limiter
    paces; a busy upstream's refusals by ``busy_wait`` (first, longest), with full jitter."""
    first_busy, longest_busy = busy_wait
    return AsyncRetrying(
        stop=stop_after_failures(max_attempts, rate_limited_for),
        wait=wait_retry_after(
            wait_if_busy(
                # full jitter: calls refused together by one saturated upstream come back apart
                wait_random_exponential(multiplier=first_busy, max=longest_busy),
                wait_exponential_jitter(multiplier=initial_wait, max=max_wait, jitter=initial_wait),
            )
        ),
        retry=retry_if_exception(worth_retrying),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
