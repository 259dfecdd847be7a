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
    assert b.spent == pytest.approx(0.4)
    held = await b.reserve(0.4)
    b.release(held)
    assert b.spent == pytest.approx(0.4) and b.reserved == 0
