"""The limiter against a virtual clock: exact, fast, no real sleeping."""

from __future__ import annotations

import anyio
import pytest

from pipeline.limiter import RateLimiter

from .helpers import max_in_any_window


class VirtualClock:
    """Time that advances only when someone sleeps (single waiter at a time, as the limiter does)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)
        await anyio.lowlevel.checkpoint()


async def grant_times(lim: RateLimiter, clock: VirtualClock, n: int) -> list[float]:
    out = []
    for _ in range(n):
        await lim.acquire()
        out.append(clock.now())
    return out


@pytest.mark.parametrize("limit", [10, 60, 300])
async def test_never_more_than_limit_in_any_window_and_close_to_rate(limit: int) -> None:
    clock = VirtualClock()
    lim = RateLimiter(limit, 60.0, clock=clock)
    times = await grant_times(lim, clock, limit * 3)
    # closed windows: even requests exactly 60 s apart count together
    assert max_in_any_window(times, 60.0 + 1e-9) <= limit
    achieved = (len(times) - 1) / (times[-1] - times[0]) * 60.0
    assert achieved >= 0.97 * limit


async def test_first_minute_is_not_a_burst_of_a_whole_minute() -> None:
    clock = VirtualClock()
    lim = RateLimiter(300, 60.0, clock=clock)
    times = await grant_times(lim, clock, 20)
    # evenly paced from the start (GCRA lets one grant come up to tau early, never a burst)
    assert times[-1] - times[0] >= 18 * 60.0 / 300


async def test_lateness_is_caught_up_without_breaking_the_window() -> None:
    clock = VirtualClock()
    lim = RateLimiter(60, 60.0, clock=clock)
    times = []
    for i in range(180):
        await lim.acquire()
        times.append(clock.now())
        clock.t += 0.3 if i % 3 == 0 else 0.0  # the scheduler wakes us late now and then
    assert max_in_any_window(times, 60.0 + 1e-9) <= 60
    assert (len(times) - 1) / (times[-1] - times[0]) * 60.0 >= 0.97 * 60


async def test_rate_limited_slows_down_pauses_and_recovers_gradually() -> None:
    clock = VirtualClock()
    lim = RateLimiter(60, 60.0, clock=clock)
    await lim.acquire()
    lim.on_rate_limited(retry_after=5.0)
    assert lim.rate is not None and lim.rate < 60
    before = clock.now()
    await lim.acquire()
    assert clock.now() - before >= 5.0  # Retry-After honoured
    rates = []
    for _ in range(30):
        lim.on_success()
        rates.append(lim.rate)
    assert rates == sorted(rates) and rates[0] < 60 and rates[-1] == 60  # additive recovery


async def test_headers_lower_the_target_and_pause_when_nothing_remains() -> None:
    clock = VirtualClock()
    lim = RateLimiter(300, 60.0, clock=clock)
    lim.on_success(limit=60, remaining=10, reset=1.0)
    assert lim.target == 60
    await lim.acquire()
    start = clock.now()
    clock.t += 0.8  # the answer came back 0.8 s later: nothing remains, a slot frees in 0.4 s
    lim.on_success(limit=60, remaining=0, reset=0.4)
    await lim.acquire()
    assert clock.now() - start == pytest.approx(1.2)  # not at the paced 1.015 s: the server said wait


async def test_a_full_window_reset_is_not_waited_for_whole() -> None:
    clock = VirtualClock()
    lim = RateLimiter(60, 60.0, clock=clock)
    await lim.acquire()
    lim.on_success(remaining=0, reset=59.0)  # sliding log: the whole window refills in 59 s
    before = clock.now()
    await lim.acquire()
    assert clock.now() - before <= 60 / 60 * 1.015 + 1e-9  # one interval, not 59 s


async def test_unlimited_never_waits() -> None:
    clock = VirtualClock()
    lim = RateLimiter(None, clock=clock)
    await grant_times(lim, clock, 1000)
    assert clock.now() == 1000.0 and lim.unlimited


async def test_concurrent_waiters_share_one_schedule() -> None:
    clock = VirtualClock()  # one sleeper at a time: the limiter's lock holds the others
    lim = RateLimiter(10, 1.0, clock=clock)
    times: list[float] = []

    async def worker() -> None:
        for _ in range(10):
            await lim.acquire()
            times.append(clock.now())

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(worker)
    assert len(times) == 80 and max_in_any_window(times, 1.0 + 1e-9) <= 10  # eight windows' worth
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert gaps == pytest.approx([1.0 / 10 * 1.015] * 79)  # one grant per interval, never two at once
