"""The three window algorithms real APIs use, so a client is tested against each.

Each limiter admits ``limit`` requests per ``window`` seconds and is asked once per request with
the current time. A rejected request does not count. A :class:`Decision` says how many requests
are left (``remaining``) and ``reset``: the seconds until ``remaining`` next goes up. That is
what ``X-RateLimit-Reset`` sends, and ``Retry-After`` too when the request was rejected, so a
client that pauses until the reset whenever ``remaining`` is 0 never hits a 429, whichever the
algorithm. (For a fixed window it is the window's end; for a sliding log, when the oldest
request leaves the window; for a token bucket, when the next whole token has dripped in.)
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from .config import Algorithm

__all__ = ["Decision", "FixedWindow", "Limiter", "SlidingLog", "TokenBucket", "make_limiter"]

MIN_WAIT = 0.001  # a reset of "0.000" would tell a client to retry at once, into another 429


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset: float


class Limiter(Protocol):
    limit: int

    def acquire(self, now: float) -> Decision: ...


class FixedWindow:
    """A counter reset at window boundaries. Windows are aligned to the key's first request, so a
    burst from a fresh key never straddles a boundary (and a test sees exactly ``limit`` pass)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self._origin: float | None = None
        self._index = 0
        self._count = 0

    def acquire(self, now: float) -> Decision:
        if self._origin is None:
            self._origin = now
        index = math.floor((now - self._origin) / self.window)
        if index != self._index:
            self._index, self._count = index, 0
        reset = max(self._origin + (index + 1) * self.window - now, MIN_WAIT)
        allowed = self._count < self.limit
        self._count += allowed
        return Decision(allowed, self.limit, self.limit - self._count, reset)


class SlidingLog:
    """Timestamps of admitted requests within the last window; at most ``limit`` of them."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self._log: deque[float] = deque()

    def acquire(self, now: float) -> Decision:
        log, horizon = self._log, now - self.window
        while log and log[0] <= horizon:
            log.popleft()
        allowed = len(log) < self.limit
        if allowed:
            log.append(now)
        return Decision(allowed, self.limit, self.limit - len(log), max(log[0] - horizon, MIN_WAIT))


class TokenBucket:
    """Capacity ``limit``, refilled at ``limit / window`` tokens per second, starting full."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.rate = limit, limit / window
        self._tokens = float(limit)
        self._stamp: float | None = None

    def acquire(self, now: float) -> Decision:
        if self._stamp is not None:
            self._tokens = min(self.limit, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        allowed = self._tokens >= 1.0
        self._tokens -= allowed
        whole = math.floor(self._tokens)
        reset = 0.0 if whole >= self.limit else (whole + 1 - self._tokens) / self.rate
        return Decision(allowed, self.limit, whole, max(reset, MIN_WAIT))


_ALGORITHMS: dict[str, type[FixedWindow] | type[SlidingLog] | type[TokenBucket]] = {
    "fixed_window": FixedWindow, "sliding_log": SlidingLog, "token_bucket": TokenBucket,
}


def make_limiter(algorithm: Algorithm, limit: int | None, window: float) -> Limiter | None:
    """A limiter for ``limit`` requests per ``window`` seconds; None when unlimited."""
    return None if limit is None else _ALGORITHMS[algorithm](limit, window)
