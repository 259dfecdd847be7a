"""The coordinator on its own (no Ray): leases follow the limiter's schedule, the budget holds, stops stick.

Its wall clock is virtual here (it stands still unless a test moves it), so every lease is exact
and no assertion depends on how fast this machine runs.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pipeline.ray.coordinator import Coordinator, ScheduleClock, lateness

from .fakes import VirtualClock
from .helpers import max_in_any_window


def _coordinator(rate: float | None, window: float, *, horizon: float = 0.1) -> tuple[Coordinator, VirtualClock]:
    wall = VirtualClock()
    return Coordinator(rate, window, None, 0.0, horizon=horizon, wall=wall.now), wall


async def _leases(coord: Coordinator, count: int, size: int) -> list[float]:
    slots: list[float] = []
    for _ in range(count):
        slots += (await coord.lease(size)).slots
    return slots


async def test_leased_grants_keep_every_window_under_the_limit_even_used_late() -> None:
    """Grants handed out ahead of time, in leases, are spaced as the limiter spaces them: used
    on time or up to the allowed lateness late, no window holds more than the limit."""
    limit, window = 300, 2.0
    coord, _ = _coordinator(limit, window, horizon=10.0)
    slots = await _leases(coord, 40, 16)  # 640 grants, about two windows ahead of now
    assert len(slots) == 640 and slots == sorted(slots)
    assert max_in_any_window(slots, window) <= limit
    late = lateness(window)
    # worst case for a window: early grants used as late as allowed, later ones on time
    for cut in range(0, 640, 37):
        used = [t + late if i < cut else t for i, t in enumerate(slots)]
        assert max_in_any_window(used, window) <= limit
    assert (slots[-1] - slots[0]) / 639 == pytest.approx(window / limit, rel=0.05)  # and near the limit


async def test_a_lease_reaches_no_further_than_its_horizon() -> None:
    coord, wall = _coordinator(60, 1.0, horizon=0.1)  # 60 per second: a grant every ~17 ms
    interval = 1 / 60 * 1.015  # the limiter's spacing, its safety margin included
    first = (await coord.lease(64)).slots
    # grants up to the horizon, and the one that crosses it: 0, 17, ..., 85 ms, then 101 ms
    assert len(first) == 7 and first[0] == wall.now()
    assert first[-2] <= wall.now() + 0.1 < first[-1] <= wall.now() + 0.1 + interval
    second = (await coord.lease(64)).slots  # the schedule is ahead already: one grant at a time
    assert len(second) == 1 and second[0] == pytest.approx(first[-1] + interval)
    wall.t += 1.0  # once the wall clock has caught up, a lease reaches the horizon again
    third = (await coord.lease(64)).slots
    assert len(third) > 2 and third[-2] <= wall.now() + 0.1 < third[-1] <= wall.now() + 0.1 + interval


async def test_unlimited_leases_are_immediate_and_whole() -> None:
    coord, wall = _coordinator(None, 60.0)
    slots = (await coord.lease(64)).slots
    assert slots == [wall.now()] * 64


async def test_a_429_slows_every_later_lease() -> None:
    coord, _ = _coordinator(600, 1.0, horizon=10.0)
    before = await _leases(coord, 1, 20)
    await coord.rate_limited(0.5, None, None, None)
    after = (await coord.lease(20)).slots
    assert after[0] - before[-1] >= 0.5  # the pause (Retry-After)
    # the lower rate: the limiter cuts its pace to 0.8x on a 429 (its headroom makes it ~0.84x here)
    assert (after[-1] - after[0]) / 19 > (before[-1] - before[0]) / 19 * 1.15


async def test_successes_ride_along_and_recover_the_rate() -> None:
    coord, _ = _coordinator(600, 1.0, horizon=10.0)
    await coord.lease(5)
    await coord.rate_limited(None, None, None, None)  # header-less: the limiter probes one at a time
    await coord.lease(1, [(None, None, None)])  # the probe went through: the pace is set from it
    slow = coord.limiter.rate
    await coord.lease(1, [(None, None, None)] * 10)  # successes ride along with the next lease
    assert coord.limiter.rate is not None and slow is not None and coord.limiter.rate > slow


async def test_the_cap_is_one_for_all_and_exceeding_it_is_a_message() -> None:
    coord = Coordinator(None, 60.0, 1.0, 0.25)
    held = await coord.reserve(0.5)
    assert held == 0.5
    await coord.settle(held, None)  # unknown outcome: the worst case stays spent
    refused = await coord.reserve(0.5)
    assert isinstance(refused, str) and "max_cost 1 reached" in refused


async def test_the_first_stop_wins_and_a_hard_one_hardens_it() -> None:
    coord = Coordinator(None, 60.0, None, 0.0)
    await coord.stop("BUDGET_EXCEEDED", "cap", False)
    await coord.stop("INTERRUPTED", "ctrl-c", False)
    assert (await coord.lease(4)).stop == ("BUDGET_EXCEEDED", "cap", False)
    await coord.stop("INTERRUPTED", "ctrl-c", True)
    assert await coord.stop_reason() == ("BUDGET_EXCEEDED", "cap", True)


async def test_counters_add_up_and_keep_the_first_and_last_call() -> None:
    coord = Coordinator(None, 60.0, None, 0.0)
    await coord.add({"calls": 3, "first_call_min": 10.0, "last_call_max": 12.0})
    await coord.add({"calls": 2, "first_call_min": 9.0, "last_call_max": 11.0})
    assert (await coord.report())["counters"] == {"calls": 5, "first_call_min": 9.0, "last_call_max": 12.0}


async def test_the_schedule_clock_moves_a_mark_instead_of_waiting() -> None:
    wall = VirtualClock()
    clock = ScheduleClock(wall.now)
    start = wall.now()
    await clock.sleep(5.0)
    assert clock.now() == start + 5.0 and wall.now() == start  # the mark moved, the wall clock did not
    await clock.sleep(7200.0)  # were this a real wait, the test's timeout (60 s) would end it
    assert clock.now() == start + 7205.0
    wall.t += 8000.0  # real time past the mark: now is real time again
    assert clock.now() == wall.now()


async def test_a_reservation_that_waits_on_a_dead_workers_calls_gives_up() -> None:
    coord = Coordinator(None, 60.0, 1.0, 0.0, stall=0.2)
    await coord.reserve(0.8)  # held by a worker that then died: it never settles
    refused = await coord.reserve(0.5)
    assert isinstance(refused, str) and "did not settle in 0.2 s" in refused


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_log", "token_bucket"])
async def test_four_workers_leasing_from_one_coordinator_are_never_refused(algorithm: str) -> None:
    """The virtual-time form of ``test_ray.py``'s four workers at the pro tier: four lessees take
    leases of 16 as they run out, and use their grants on time or up to the allowed lateness late
    (the latest a worker sends one; a later one it drops). The sandbox's own window algorithm, at
    the exact times of use, refuses none of them, and the four together use the tier (its measure
    in real time, with the network in between, is ``make bench``'s: bench/ray_run.py, tier use).
    How late a grant may be used is checked more sharply by the single-lessee test above."""
    import random

    from pipeline.sandbox.ratelimit import make_limiter

    limit, window, rows = 300, 2.0, 1500  # five windows' worth
    coord, wall = _coordinator(limit, window)
    late, rng = lateness(window), random.Random(7)
    # how late each lessee is: two use their grants as late as allowed (the worst for the grants of
    # the lessees that follow theirs), one on time, one anywhere in between
    delay: list[Callable[[], float]] = [lambda: late, lambda: 0.0, lambda: late, lambda: rng.uniform(0, late)]
    workers: list[list[float]] = [[] for _ in range(4)]
    used: list[float] = []
    while len(used) < rows:
        for held in workers:
            if not held:  # out of grants: lease more, at what the wall clock says now
                held.extend((await coord.lease(16)).slots)
        i = min(range(4), key=lambda k: workers[k][0])  # the worker with the earliest grant sends next
        slot = workers[i].pop(0)
        wall.t = max(wall.t, slot)  # time passes until the grant is due
        used.append(slot + delay[i]())
    server = make_limiter(algorithm, limit, window)  # type: ignore[arg-type]
    assert server is not None
    refused = [t for t in sorted(used) if not server.acquire(t).allowed]
    assert refused == []
    assert max_in_any_window(sorted(used), window) <= limit
    span = max(used) - min(used)
    assert rows / span * window > 0.95 * limit  # and the four together use the tier, not a quarter of it


def test_on_ray_the_first_row_of_a_request_carries_its_cost_and_tokens() -> None:
    """As a local run writes it (pipeline.sink): duplicates, across the driver's batches, at 0."""
    import polars as pl

    from pipeline.ray.run import _first_pays

    seen: set[str] = set()
    parts = [pl.DataFrame({"request_key": ["a", None, "a"], "cost": [0.2, None, 0.2], "tokens_used": [5, None, 5]}),
             pl.DataFrame({"request_key": ["b", "a"], "cost": [0.1, 0.2], "tokens_used": [3, 5]})]
    out = pl.concat([_first_pays(part, seen) for part in parts])
    assert out["duplicate"].to_list() == [False, False, True, False, True]
    assert out["cost"].to_list() == [0.2, None, 0.0, 0.1, 0.0]
    assert out["tokens_used"].to_list() == [5, None, 0, 3, 0]  # sums to 8: what the server counted
