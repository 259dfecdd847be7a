"""The cost cap: reserve the worst case, settle to the real cost, never start what cannot fit."""

from __future__ import annotations

import anyio
import pytest

from pipeline.budget import Budget
from pipeline.errors import BudgetExceeded


async def test_uncapped_budget_never_blocks() -> None:
    b = Budget(None)
    held = await b.reserve(1e9)
    b.settle(held, 5.0)
    assert b.spent == 5.0 and b.remaining is None


async def test_reserve_refuses_when_nothing_in_flight_can_free_room() -> None:
    b = Budget(1.0, spent=0.7)
    with pytest.raises(BudgetExceeded, match="max_cost 1"):
        await b.reserve(0.31)
    held = await b.reserve(0.3)
    b.settle(held, 0.3)
    assert b.spent == pytest.approx(1.0)


async def test_waits_for_in_flight_calls_to_settle_below_their_worst_case() -> None:
    b = Budget(1.0)
    first = await b.reserve(0.6)
    got: list[float] = []

    async def second() -> None:
        got.append(await b.reserve(0.6))  # does not fit until the first settles at 0.1

    async with anyio.create_task_group() as tg:
        tg.start_soon(second)
        await anyio.wait_all_tasks_blocked()
        assert got == []
        b.settle(first, 0.1)
    assert got == [0.6]
    assert b.spent + b.reserved <= b.cap


async def test_unknown_cost_keeps_the_worst_case_and_release_frees_it() -> None:
    b = Budget(1.0)
    held = await b.reserve(0.4)
    b.settle(held, None)
    assert b.counted == pytest.approx(0.4) and b.spent == 0
    held = await b.reserve(0.4)
    b.release(held)
    assert b.counted == pytest.approx(0.4) and b.reserved == 0


class FakeAccount:
    """A balance that the test charges by hand; reads are counted."""

    def __init__(self, balance: float) -> None:
        self.balance = balance

    async def read(self) -> float:
        return self.balance


async def test_a_balance_read_releases_what_unknown_outcomes_did_not_cost() -> None:
    account = FakeAccount(10.0)
    now = [0.0]
    b = Budget(1.0, balance=account.read, reread_seconds=5.0, clock=lambda: now[0])
    await b.start()
    for actual in (None, None, 0.1):  # two calls lost their answers, one reported 0.1
        held = await b.reserve(0.3)
        b.settle(held, actual)
    account.balance -= 0.1 + 0.05  # the server charged the known call, and one lost call 0.05
    assert b.counted == pytest.approx(0.7)
    now[0] = 5.0  # the next call does not fit (0.7 + 0.4 > 1): the balance is read again
    held = await b.reserve(0.4)
    assert b.counted == pytest.approx(0.15) and b.balance_reads == 2
    b.settle(held, 0.4)


async def test_unknown_outcomes_never_count_for_more_than_their_worst_case() -> None:
    account = FakeAccount(10.0)
    b = Budget(1.0, balance=account.read, reread_seconds=0.0)
    await b.start()
    held = await b.reserve(0.3)
    b.settle(held, None)
    account.balance -= 5.0  # somebody else spent on the account too: still at most 0.3
    with pytest.raises(BudgetExceeded, match="calls whose charge is unknown"):
        await b.reserve(0.75)
    assert b.counted == pytest.approx(0.3)


async def test_without_a_new_unknown_outcome_the_balance_is_not_read_again() -> None:
    account = FakeAccount(10.0)
    b = Budget(1.0, balance=account.read, reread_seconds=0.0)
    await b.start()
    held = await b.reserve(0.5)
    b.settle(held, None)
    account.balance -= 0.5  # it was charged in full
    with pytest.raises(BudgetExceeded):
        await b.reserve(0.6)
    with pytest.raises(BudgetExceeded):
        await b.reserve(0.6)
    assert b.balance_reads == 2  # the start, and one read for the unknown outcome


async def test_a_balance_read_under_way_is_waited_for_not_taken_for_a_no() -> None:
    gate, reads = anyio.Event(), [0]

    async def slow_read() -> float:
        reads[0] += 1
        if reads[0] > 1:
            await gate.wait()
        return 10.0  # nothing was charged

    b = Budget(1.0, balance=slow_read, reread_seconds=0.0)
    await b.start()
    held = await b.reserve(0.6)
    b.settle(held, None)  # counted at 0.6 until the balance says otherwise
    got: list[float] = []
    async with anyio.create_task_group() as tg:
        for _ in range(2):  # both block; one reads, the other must wait for that read
            tg.start_soon(lambda: _append(got, b.reserve(0.5)))
        await anyio.wait_all_tasks_blocked()
        gate.set()
    assert got == [0.5, 0.5] and reads[0] == 2 and b.counted == 0


async def _append(got: list[float], reservation: object) -> None:
    got.append(await reservation)  # type: ignore[misc]


def test_a_hold_without_waiting_only_without_a_cap() -> None:
    free = Budget(None)
    assert free.hold_now(1.0) == 0.0
    free.settle(0.0, 0.5)  # the hold counts as a call in flight, as reserve's does
    assert Budget(1.0).hold_now(0.1) is None  # a cap: reserve decides, and may wait
