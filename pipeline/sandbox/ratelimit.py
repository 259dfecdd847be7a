"""The three window algorithms real APIs use, so a client is tested against each.

Each limiter admits ``limit`` requests per ``window`` seconds and is asked once per request with
the current time. A rejected request does not count. Times in a :class:`Decision`:

- ``retry_after``: seconds until the next request would be admitted (only when rejected);
- ``reset``: seconds until ``remaining`` is back to ``limit`` (what ``X-RateLimit-Reset`` says).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from .config import Algorithm

__all__ = ["Decision", "FixedWindow", "Limiter", "SlidingLog", "TokenBucket", "make_limiter"]

MIN_RETRY_AFTER = 0.001


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset: float
    retry_after: float = 0.0


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
        reset = max(self._origin + (index + 1) * self.window - now, MIN_RETRY_AFTER)
        if self._count >= self.limit:
            return Decision(False, self.limit, 0, reset, reset)
        self._count += 1
        return Decision(True, self.limit, self.limit - self._count, reset)


class SlidingLog:
    """Timestamps of admitted requests within the last window; at most ``limit`` of them."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self._log: deque[float] = deque()

    def acquire(self, now: float) -> Decision:
        log, horizon = self._log, now - self.window
        while log and log[0] <= horizon:
            log.popleft()
        if len(log) >= self.limit:
            retry = max(log[0] - horizon, MIN_RETRY_AFTER)
            return Decision(False, self.limit, 0, max(log[-1] - horizon, MIN_RETRY_AFTER), retry)
        log.append(now)
        return Decision(True, self.limit, self.limit - len(log), max(log[-1] - horizon, MIN_RETRY_AFTER))


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
        if self._tokens < 1.0:
            retry = max((1.0 - self._tokens) / self.rate, MIN_RETRY_AFTER)
            return Decision(False, self.limit, 0, self._full_in(), retry)
        self._tokens -= 1.0
        return Decision(True, self.limit, int(self._tokens), self._full_in())

    def _full_in(self) -> float:
        return max((self.limit - self._tokens) / self.rate, MIN_RETRY_AFTER)


_ALGORITHMS: dict[str, type[FixedWindow] | type[SlidingLog] | type[TokenBucket]] = {
    "fixed_window": FixedWindow, "sliding_log": SlidingLog, "token_bucket": TokenBucket,
}


def make_limiter(algorithm: Algorithm, limit: int | None, window: float) -> Limiter | None:
    """A limiter for ``limit`` requests per ``window`` seconds; None when unlimited."""
    return None if limit is None else _ALGORITHMS[algorithm](limit, window)
