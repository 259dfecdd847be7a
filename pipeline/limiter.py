"""Client-side pacing that matches an account's rate tier.

Why not a classic token bucket: a bucket that starts full at a minute's capacity (300, refilling
5/s) lets through up to twice the limit in the first minute. Why not ``aiolimiter``: it is that
bucket (burst = capacity), asyncio-only, takes no clock and cannot slow down on a 429.

So this is GCRA (the "virtual scheduling" form of a token bucket) with almost no burst:
requests are granted at least ``interval = window / limit × (1 + safety)`` apart, with a small
catch-up tolerance ``tau`` for scheduler lateness. With ``tau < safety × window`` no window of
``window`` seconds, anywhere, holds more than ``limit`` grants, whatever algorithm the server
counts with (fixed window, sliding log, token bucket), and the server still sees
``1 / (1 + safety)`` of its allowed rate.

It adapts live: a ``RATE_LIMIT`` cuts the rate (multiplicative decrease) and pauses everyone
for ``Retry-After``; ``X-RateLimit-Remaining: 0`` pauses until the reset; a server that reports
a lower ``X-RateLimit-Limit`` than the job's tier lowers the target. Each success then recovers
the rate gradually (additive increase) up to the target.
"""

from __future__ import annotations

import time
from typing import Protocol

import anyio


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """Real time."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


class RateLimiter:
    """Grants requests no faster than ``limit`` per ``window`` seconds (``limit=None``: unlimited)."""

    def __init__(
        self,
        limit: float | None,
        window: float = 60.0,
        *,
        clock: Clock | None = None,
        safety: float = 0.015,
        decrease: float = 0.7,
        recover_per_success: float = 0.05,
    ) -> None:
        self._clock = clock or MonotonicClock()
        self._window = window
        self._safety = safety
        self._decrease = decrease
        self._step = recover_per_success
        self._target: float | None = None  # requests per window
        self._rate: float | None = None
        self._tat: float | None = None  # theoretical arrival time of the next grant
        self._paused_until = 0.0
        self._lock = anyio.Lock()  # one waiter at a time, FIFO: each sleeps only its shortfall
        self.granted = 0
        self.rate_limited = 0
        if limit is not None:
            self._set_target(limit)

    # -- reading -----------------------------------------------------------------------------
    @property
    def unlimited(self) -> bool:
        return self._target is None

    @property
    def rate(self) -> float | None:
        """Current pace in requests per window (below the target after a 429)."""
        return self._rate

    @property
    def target(self) -> float | None:
        return self._target

    def _interval(self) -> float:
        assert self._rate is not None
        return self._window / self._rate * (1 + self._safety)

    def _tau(self) -> float:
        # catch-up allowed for lateness; half the safety margin keeps every window under the limit
        return min(self._interval(), self._safety * self._window / 2)

    # -- granting ----------------------------------------------------------------------------
    async def acquire(self) -> None:
        """Wait until the next request may be sent (GCRA: allowed once ``now >= tat - tau``)."""
        if self._target is None:
            return
        async with self._lock:
            while True:
                now = self._clock.now()
                # the first grant has no lateness to make up: the second comes one interval later
                tat = self._tat if self._tat is not None else now + self._tau()
                earliest = max(tat - self._tau(), self._paused_until)
                if now >= earliest:
                    break
                await self._clock.sleep(earliest - now)
            # idle time earns no credit: the schedule restarts from now
            self._tat = max(tat, now) + self._interval()
            self.granted += 1

    # -- feedback ----------------------------------------------------------------------------
    def on_success(self, limit: int | None = None, remaining: int | None = None,
                   reset: float | None = None) -> None:
        """A call went through; headers (when sent) may still tell us to slow down."""
        if self._target is None:
            return
        self._observe(limit, remaining, reset)
        assert self._rate is not None
        self._rate = min(self._target, self._rate + self._step * self._target)

    def on_rate_limited(self, retry_after: float | None = None, limit: int | None = None,
                        remaining: int | None = None, reset: float | None = None) -> None:
        """The server said RATE_LIMIT: slow down, and pause for ``Retry-After`` when given."""
        self.rate_limited += 1
        if self._target is None:
            self._pause(retry_after)
            return
        self._observe(limit, remaining, reset)
        assert self._rate is not None
        self._rate = max(self._target * 0.05, self._rate * self._decrease)
        self._pause(retry_after if retry_after is not None else self._interval())

    def _observe(self, limit: int | None, remaining: int | None, reset: float | None) -> None:
        if limit is not None and self._target is not None and 0 < limit < self._target:
            self._set_target(limit)
        # Servers mean different things by "reset": when a slot frees (fixed window) or when the
        # whole window has refilled (sliding log, token bucket). A reset longer than our interval
        # is the second kind: pacing already waits for the next slot, and a 429's Retry-After
        # corrects us if not. A shorter one is a boundary worth waiting for.
        if remaining is not None and remaining <= 0 and reset is not None and reset <= self._interval():
            self._pause(reset)

    def _pause(self, seconds: float | None) -> None:
        if seconds and seconds > 0:
            self._paused_until = max(self._paused_until, self._clock.now() + seconds)

    def _set_target(self, limit: float) -> None:
        if limit <= 0:
            raise ValueError("a rate limit must be positive")
        self._target = float(limit)
        self._rate = float(limit) if self._rate is None else min(self._rate, float(limit))
