"""A hard spending cap that holds to the cent.

Before a call, its worst-case cost is reserved; after, the reservation is settled to the real
cost. A call whose worst case does not fit in what is left is never started: it waits for calls
in flight to settle (their real cost is usually below their worst case), and when nothing is in
flight and it still does not fit, :class:`~pipeline.errors.BudgetExceeded` stops the job.
"""

from __future__ import annotations

import anyio

from .errors import BudgetExceeded


class Budget:
    def __init__(self, cap: float | None, *, spent: float = 0.0) -> None:
        self.cap = cap
        self.spent = spent  # settled, including earlier runs of the same job
        self.reserved = 0.0
        self._in_flight = 0
        self._settled = anyio.Event()

    @property
    def remaining(self) -> float | None:
        return None if self.cap is None else self.cap - self.spent - self.reserved

    async def reserve(self, worst: float) -> float:
        """Hold ``worst`` for one call; returns the amount to pass to :meth:`settle`."""
        if self.cap is None:
            self._in_flight += 1
            return 0.0
        while self.spent + self.reserved + worst > self.cap + 1e-12:
            if self._in_flight == 0:
                raise BudgetExceeded(
                    f"max_cost {self.cap:g} reached: spent {self.spent:.6f}, the next call may "
                    f"cost up to {worst:.6f}"
                )
            await self._settled.wait()
        self.reserved += worst
        self._in_flight += 1
        return worst

    def settle(self, held: float, actual: float | None) -> None:
        """The call is over: ``actual`` is what it cost (``None``: unknown, keep the worst case)."""
        self.reserved -= held
        self.spent += held if actual is None and self.cap is not None else (actual or 0.0)
        self._in_flight -= 1
        self._settled.set()
        self._settled = anyio.Event()

    def release(self, held: float) -> None:
        """The call failed without being charged."""
        self.settle(held, 0.0)
