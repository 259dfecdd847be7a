"""A hard spending cap that holds to the cent, unknown outcomes included.

Before a call, its worst-case cost is reserved; after, the reservation is settled to the real
cost. A call whose outcome is unknown (sent, then a reset, a timeout, a broken body, a stream
without its summary, a cancel) may have been charged: it stays counted at its worst case. A
call whose worst case does not fit in what is left is never started: it waits for calls in
flight to settle (their real cost is usually below their worst case), and when nothing is in
flight and it still does not fit, :class:`~pipeline.errors.BudgetExceeded` stops the job.

Where the service reports the balance, the worst cases held for unknown outcomes are checked
against it: when they block the next call (and at most every ``reread_seconds``), the balance is
read again, and what the account lost beyond the known costs is all the unknown calls can have
cost. Anything above that is released, so a capped job still gets close to its cap. The account
is never charged more than ``cap``: the balance can only overstate what unknown calls cost
(other spending on the account, calls in flight already charged), never understate it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable

import anyio

from .errors import BudgetExceeded, MomoError

BalanceReader = Callable[[], Awaitable[float | None]]  # what the account has left, or None


class Budget:
    def __init__(self, cap: float | None, *, spent: float = 0.0, balance: BalanceReader | None = None,
                 reread_seconds: float = 3.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.cap = cap
        self.spent = spent  # known costs, including earlier runs of the same job
        self.reserved = 0.0
        self._in_flight = 0
        self._settled = anyio.Event()
        # calls of this run whose charge is unknown: their worst cases, and what they count for now
        self._unknown_held = 0.0
        self._unknown = 0.0
        self._known_run = 0.0  # known costs of this run (what the balance read is compared with)
        self._balance = balance
        self._before: float | None = None
        self._reread_seconds = reread_seconds
        self._clock = clock
        self._last_read = -math.inf
        self._dirty = False  # a settle since the last balance read, with unknown outcomes counted
        self._reading: anyio.Event | None = None  # set when the balance read under way is done
        self.balance_reads = 0

    @property
    def counted(self) -> float:
        """Everything that may have been charged: known costs and unknown outcomes."""
        return self.spent + self._unknown

    @property
    def remaining(self) -> float | None:
        return None if self.cap is None else self.cap - self.counted - self.reserved

    async def start(self) -> None:
        """Read the balance once before the first call (the reference for later reads)."""
        if self.cap is not None and self._balance is not None:
            self._before = await self._read()

    def hold_now(self, worst: float) -> float | None:
        """:meth:`reserve` without a cap, which never waits; ``None`` with one."""
        if self.cap is None:
            self._in_flight += 1
            return 0.0
        return None

    async def reserve(self, worst: float) -> float:
        """Hold ``worst`` for one call; returns the amount to pass to :meth:`settle`."""
        held = self.hold_now(worst)
        if held is not None:
            return held
        cap = self.cap
        assert cap is not None  # hold_now holds whenever there is no cap
        while self.counted + self.reserved + worst > cap + 1e-12:
            if await self._reread():
                continue
            if self._in_flight == 0:
                raise BudgetExceeded(
                    f"max_cost {cap:g} reached: spent {self.counted:.6f} (of which {self._unknown:.6f} for "
                    f"calls whose charge is unknown), the next call may cost up to {worst:.6f}"
                )
            await self._settled.wait()
        self.reserved += worst
        self._in_flight += 1
        return worst

    def settle(self, held: float, actual: float | None) -> None:
        """The call is over: ``actual`` is what it cost (``None``: it may have been charged, amount unknown)."""
        self.reserved -= held
        self._in_flight -= 1
        if actual is None:
            if self.cap is not None:
                self._unknown_held += held
                self._unknown += held
        else:
            self.spent += actual
            self._known_run += actual
        # a read taken while this call was in flight may have counted its charge as an unknown's:
        # with unknown outcomes counted, any settle makes the next read worth taking
        self._dirty = self._unknown > 0
        if self.cap is not None:  # nobody waits without a cap: no event per call then
            self._settled.set()
            self._settled = anyio.Event()

    def release(self, held: float) -> None:
        """The call failed without being charged."""
        self.settle(held, 0.0)

    async def _reread(self) -> bool:
        """Check the unknown outcomes against the balance; True when the caller should look again."""
        if self._reading is not None:  # another task is reading: its answer is ours too
            await self._reading.wait()
            return True
        if not self._dirty or self._before is None:
            return False
        wait = self._last_read + self._reread_seconds - self._clock()
        if wait > 0 and self._in_flight:
            return False  # a settle will wake the caller sooner
        self._reading = anyio.Event()
        try:
            if wait > 0:
                await anyio.sleep(wait)
            self._dirty = False
            now = await self._read()
        finally:
            self._reading.set()
            self._reading = None
        if now is None:
            return False
        lost = self._before - now  # what the account was charged since the run began
        counted = min(self._unknown_held, max(0.0, lost - self._known_run))
        released, self._unknown = self._unknown - counted, counted
        return released > 1e-12

    async def _read(self) -> float | None:
        assert self._balance is not None
        self._last_read = self._clock()
        self.balance_reads += 1
        try:
            return await self._balance()
        except MomoError:  # a failed read changes nothing: the worst cases stay counted
            return None
