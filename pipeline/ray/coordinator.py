"""One rate limit, one budget and one stop for every worker of a distributed run.

:class:`Coordinator` is plain Python; the driver runs it as a single Ray actor. It holds the
same :class:`~pipeline.limiter.RateLimiter` and :class:`~pipeline.budget.Budget` a local run
uses and only calls their methods, so improvements to either apply here unchanged.

**Leases.** A worker does not ask for each grant (one round trip per call would cap the whole
job at the actor's round trips per second). It asks for a *lease* of up to ``n`` grants and gets
their times: the limiter runs on a :class:`ScheduleClock`, whose ``sleep`` moves a mark forward
instead of waiting, so ``n`` calls to ``acquire()`` return at once with the times the limiter
would have granted them. A lease reaches at most ``horizon`` seconds ahead, so a slow-down (a
429, a lower ``X-RateLimit-Limit``) applies to every worker within that time; the worker drops
its unused grants when it is told of a 429 itself. Grant times are wall-clock (``time.time()``),
the one clock that processes on a machine (and NTP-synced machines) share.

A grant used late can crowd a window (grants are spaced by the limiter's interval, so using one
late puts it closer to the next); a worker drops a grant more than :func:`lateness` past its
time. The limiter keeps ``safety × window`` of slack in every window and its catch-up allowance
takes at most half of it; a quarter is the lateness allowed here, and the last quarter is left for
what happens between a worker's check and the server's clock (the ledger's write, the send, the
network, a busy machine's scheduler).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..budget import Budget
from ..errors import BudgetExceeded
from ..limiter import RateLimiter

SAFETY = 0.015  # the limiter's default margin (see pipeline.limiter)
Headers = tuple[int | None, int | None, float | None]  # X-RateLimit-Limit, -Remaining, -Reset


def lateness(window: float) -> float:
    """How late a worker may use a grant: a quarter of the limiter's slack in a window."""
    return SAFETY * window / 4


class ScheduleClock:
    """Real time for ``now``; ``sleep`` only moves a mark, so the limiter says when, not waits.

    ``wall`` is the wall clock (``time.time``); tests give a virtual one."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self.wall = wall
        self._mark = 0.0

    def now(self) -> float:
        return max(self.wall(), self._mark)

    async def sleep(self, seconds: float) -> None:
        self._mark = self.now() + max(0.0, seconds)

    async def sleep_unless(self, event: anyio.Event, seconds: float) -> None:
        """A probe episode's wait: scheduled like any other (the coordinator never waits)."""
        await self.sleep(seconds)


@dataclass
class Lease:
    """Grant times (wall clock), and why the job stopped, if it did."""

    slots: list[float]
    stop: tuple[str, str, bool] | None = None  # code, message, hard


@dataclass
class Counters:
    """What the workers did, added up (the driver's summary)."""

    values: dict[str, float] = field(default_factory=dict)

    def add(self, delta: dict[str, float]) -> None:
        for name, value in delta.items():
            if name.endswith("_min"):
                self.values[name] = min(self.values.get(name, value), value)
            elif name.endswith("_max"):
                self.values[name] = max(self.values.get(name, value), value)
            else:
                self.values[name] = self.values.get(name, 0) + value


class Coordinator:
    """The shared state of one distributed run: pacing, money, stop, counters.

    Every method is a coroutine: as a Ray actor it is an async actor, whose methods all run on
    one event loop, so the limiter and the budget need no locks beyond their own."""

    def __init__(self, rate: float | None, window: float, cap: float | None, spent: float,
                 horizon: float = 0.1, stall: float = 120.0, wall: Callable[[], float] = time.time) -> None:
        self.clock = ScheduleClock(wall)
        self.stall = stall
        self.limiter = RateLimiter(rate, window, clock=self.clock)
        self.budget = Budget(cap, spent=spent)
        self.horizon = horizon
        self.stopped: tuple[str, str, bool] | None = None
        self.counters = Counters()

    # -- pacing ------------------------------------------------------------------------------
    async def lease(self, n: int, successes: list[Headers] | None = None) -> Lease:
        """Up to ``n`` grant times (at least one), after applying the worker's recent successes."""
        for limit, remaining, reset in successes or ():
            self.limiter.on_success(limit, remaining, reset)
        if self.stopped is not None:
            return Lease([], self.stopped)
        slots: list[float] = []
        reach = self.clock.wall() + self.horizon
        while len(slots) < max(1, n):
            await self.limiter.acquire()
            slots.append(self.clock.now())
            if slots[-1] > reach:
                break
        return Lease(slots)

    async def rate_limited(self, retry_after: float | None, limit: int | None, remaining: int | None,
                     reset: float | None, stated: tuple[int, float, bool] | None = None) -> None:
        self.limiter.on_rate_limited(retry_after, limit, remaining, reset, stated=stated)

    # -- money -------------------------------------------------------------------------------
    async def reserve(self, worst: float) -> float | str:
        """The amount held, or why the cap stops the job (the worker raises it as its own).

        A call that does not fit waits for calls in flight to settle; a worker that died never
        settles its own, so the wait ends after ``stall`` seconds (their worst cases stay held)."""
        try:
            with anyio.move_on_after(self.stall):
                return await self.budget.reserve(worst)
        except BudgetExceeded as exc:
            return str(exc)
        return (f"max_cost {self.budget.cap:g} reached: spent {self.budget.spent:.6f}, held "
                f"{self.budget.reserved:.6f} for calls in flight that did not settle in {self.stall:g} s")

    async def settle(self, held: float, actual: float | None) -> None:
        self.budget.settle(held, actual)

    # -- stopping and counting ---------------------------------------------------------------
    async def stop(self, code: str, message: str, hard: bool = False) -> None:
        """The first reason wins; a hard stop after a soft one makes it hard."""
        if self.stopped is None:
            self.stopped = (code, message, hard)
        elif hard and not self.stopped[2]:
            self.stopped = (*self.stopped[:2], True)

    async def stop_reason(self) -> tuple[str, str, bool] | None:
        return self.stopped

    async def add(self, delta: dict[str, float]) -> tuple[str, str, bool] | None:
        """Count a worker's batch; the answer is :meth:`stop_reason` (the worker's next check)."""
        self.counters.add(delta)
        return self.stopped

    async def report(self) -> dict[str, Any]:
        return {"counters": dict(self.counters.values), "granted": self.limiter.granted,
                "rate_limited": self.limiter.rate_limited, "spent": self.budget.spent,
                "stopped": self.stopped}


class LocalHandle:
    """The coordinator in this process, behind what a Ray actor handle offers a worker
    (``handle.method.remote(...)``, awaitable): a :class:`~.worker.Worker` run without Ray (the
    tests, and ``bench/ray_engine.py``, which tells the worker's own cost from Ray's)."""

    def __init__(self, target: object) -> None:
        self.target = target

    def __getattr__(self, name: str) -> _LocalMethod:
        return _LocalMethod(getattr(self.target, name))


class _LocalMethod:
    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> asyncio.Future[Any]:
        result = self.fn(*args)
        if inspect.isawaitable(result):
            return asyncio.ensure_future(result)
        done = asyncio.get_running_loop().create_future()
        done.set_result(result)
        return done
