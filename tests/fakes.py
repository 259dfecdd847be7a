"""Stand-ins for the unit tests of the core pieces: a scripted provider, a virtual clock, and a
stop whose retry waits pass in virtual time.

Time: the runner waits in three places, each one injectable without touching ``pipeline``: the
limiter (its ``clock``), a retry's backoff (``Stop.sleep``, which :class:`VirtualStop` overrides)
and the budget (which only sleeps when it re-reads a balance; these tests give it none). So no
test here waits in real time. anyio has no virtual clock on asyncio (trio's ``MockClock`` is
trio-only and not a dependency), hence the small one below.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.lowlevel
import polars as pl

from pipeline.budget import Budget
from pipeline.dataset import PROMPT, ROW
from pipeline.keys import KEY, OCC, Keyer
from pipeline.ledger import Cache, Ledger
from pipeline.limiter import RateLimiter
from pipeline.plan import Plan
from pipeline.providers.base import Account, CallResult, Price, PromptRequest
from pipeline.result import RowResult
from pipeline.runner import Caller, Fanout, PromptTask, RunStats, Stop, WorstCost


class VirtualClock:
    """Time that advances only when someone sleeps (single waiter at a time, as the limiter does)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)
        await anyio.lowlevel.checkpoint()

    async def sleep_unless(self, event: anyio.Event, seconds: float) -> None:
        if not event.is_set():  # nobody else runs while we sleep: the whole wait passes
            await self.sleep(seconds)


class VirtualStop(Stop):
    """A :class:`Stop` whose retry waits pass on a virtual clock; it keeps what each wait was.

    A wait still runs in the stop's ``waiting`` scope, so a stop cuts it short as it would a real one."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self.clock = clock
        self.waits: list[float] = []

    async def sleep(self, seconds: float) -> None:
        with self.waiting():
            self.waits.append(seconds)
            await self.clock.sleep(seconds)


# What the fake answers a prompt with, call by call: a CallResult, or an exception to raise.
Script = Callable[[str, int], object]  # (prompt, how many calls for it came before) -> outcome


def answer(prompt: str, cost: float = 0.001, tokens: int = 100) -> CallResult:
    return CallResult(content=f"answer to {prompt}", request_id=f"req-{prompt}", tokens_used=tokens, cost=cost)


@dataclass
class FakeProvider:
    """A :class:`~pipeline.providers.base.Provider` that answers from a script and counts every call.

    ``gate``: when given, each call waits for it (calls then stay "in flight" until the test opens it).
    ``charged``: what the fake's "account" was charged, call by call (what a server would bill),
    including calls that raise after being charged (``charge_before_raise``)."""

    script: Script = lambda prompt, n: answer(prompt)
    gate: anyio.Event | None = None
    charge_before_raise: float = 0.0
    name: str = "momo"
    target: str = "159"
    endpoint: str = "http://fake.example/v1"
    calls: list[PromptRequest] = field(default_factory=list)
    charged: list[float] = field(default_factory=list)
    in_flight: int = 0
    clock: VirtualClock | None = None  # when given, each call's time on it is kept in ``times``
    times: list[float] = field(default_factory=list)
    answered: Counter[str] = field(default_factory=Counter)  # calls that got an answer, by prompt
    _waiting_for: tuple[int, anyio.Event] | None = None

    async def wait_in_flight(self, n: int) -> None:
        """Until ``n`` calls are in flight at once."""
        if self.in_flight < n:
            self._waiting_for = (n, anyio.Event())
            await self._waiting_for[1].wait()

    @property
    def prompts(self) -> Counter[str]:
        return Counter(r.prompt for r in self.calls)

    async def complete(self, request: PromptRequest) -> CallResult:
        before = self.prompts[request.prompt]
        self.calls.append(request)
        if self.clock is not None:
            self.times.append(self.clock.now())
        self.in_flight += 1
        if self._waiting_for is not None and self.in_flight >= self._waiting_for[0]:
            self._waiting_for[1].set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            await anyio.lowlevel.checkpoint()  # let other calls interleave, as a real one would
            outcome = self.script(request.prompt, before)
        finally:
            self.in_flight -= 1
        if isinstance(outcome, BaseException):
            if self.charge_before_raise:
                self.charged.append(self.charge_before_raise)
            raise outcome
        assert isinstance(outcome, CallResult), outcome
        self.charged.append(outcome.cost or 0.0)
        self.answered[request.prompt] += 1
        return outcome

    async def account(self) -> Account:
        return Account(remaining=None, currency="CNY")

    async def price(self) -> Price:
        return Price(1.0, 1.0, "CNY")

    async def aclose(self) -> None:
        pass


KEYER = Keyer(service="momo", endpoint="http://fake", target="159", temperature=None, max_tokens=300)


def batches_of(prompts: Sequence[str | None], *, rows_per_batch: int = 4, keyer: Keyer = KEYER,
               dedup: bool = True) -> Callable[[], Iterator[pl.DataFrame]]:
    """The reader's input, as :meth:`pipeline.plan.Plan.batches` gives it: ROW, PROMPT, KEY, OCC."""
    keys: list[str | None] = []
    occ: list[int] = []
    seen: Counter[str] = Counter()
    for p in prompts:
        key = keyer.row(p) if p else None
        n = 0 if dedup or key is None else seen[key]
        if key is not None:
            seen[key] += 1
        keys.append(key if n == 0 or key is None else keyer.request(p or "", keyer.temperature, occurrence=n))
        occ.append(n)
    frame = pl.DataFrame({ROW: pl.Series(range(len(prompts)), dtype=pl.UInt32),
                          PROMPT: pl.Series(prompts, dtype=pl.String),
                          KEY: pl.Series(keys, dtype=pl.String), OCC: pl.Series(occ, dtype=pl.UInt32)})

    def batches() -> Iterator[pl.DataFrame]:
        return iter(frame.iter_slices(rows_per_batch))

    return batches


@dataclass
class Rig:
    """One runner over a fake provider, a virtual clock and a real ledger in a temporary folder."""

    provider: FakeProvider
    ledger: Ledger
    clock: VirtualClock
    stop: VirtualStop
    stats: RunStats
    budget: Budget
    limiter: RateLimiter
    results: list[RowResult] = field(default_factory=list)
    cache: Cache | None = None  # answers shared across jobs (``--cache``)

    def caller(self, *, max_attempts: int = 3, worst_cost: WorstCost | None = None,
               keyer: Keyer = KEYER) -> Caller:
        return Caller(self.provider, limiter=self.limiter, budget=self.budget, stats=self.stats, stop=self.stop,
                      max_attempts=max_attempts, request=PromptRequest(prompt="", max_tokens=keyer.max_tokens),
                      keyer=keyer, ledger=self.ledger, cache=self.cache, worst_cost=worst_cost, backoff=(0.5, 30.0))

    async def run(self, prompts: Sequence[str | None], *, concurrency: int = 4, max_attempts: int = 3,
                  worst_cost: WorstCost | None = None, rows_per_batch: int = 4, dedup: bool = True,
                  on_result: Callable[[RowResult], None] | None = None,
                  plan: Plan | None = None, only_rows: set[int] | None = None) -> list[RowResult]:
        """Run ``prompts`` (or, given a ``plan``, its rows: ``prompts`` is then ignored)."""
        def record(result: RowResult) -> None:
            self.results.append(result)
            if on_result is not None:
                on_result(result)

        if plan is not None:
            batches: Callable[[], Iterator[pl.DataFrame]] = lambda: plan.batches(rows_per_batch)  # noqa: E731
        else:
            batches = batches_of(prompts, rows_per_batch=rows_per_batch, dedup=dedup)
        caller = self.caller(max_attempts=max_attempts, worst_cost=worst_cost,
                             keyer=plan.keyer if plan is not None else KEYER)
        fan = Fanout(PromptTask(), caller, self.ledger, batches, concurrency, on_result=record,
                     only_rows=only_rows)
        await fan.run()
        return self.results

    def outcome(self, prompt: str) -> dict[str, object] | None:
        """The row outcome the ledger holds for ``prompt``'s key (None when it has none)."""
        entry = self.ledger.get(KEYER.row(prompt))
        return None if entry is None or entry.state < 2 else entry.record


def rig(tmp: Path, provider: FakeProvider, *, cap: float | None = None, spent: float = 0.0,
        rate: float | None = None, window: float = 60.0) -> Rig:
    """A :class:`Rig` whose ledger is ``tmp/out.ledger`` (close it: ``with rig(...).ledger``)."""
    clock = VirtualClock()
    provider.clock = clock
    return Rig(provider, Ledger.open(tmp / "out.parquet"), clock, VirtualStop(clock), RunStats(),
               Budget(cap, spent=spent), RateLimiter(rate, window, clock=clock))


def prompts(n: int, *, blank: Iterable[int] = ()) -> list[str | None]:
    empty = set(blank)
    return [None if i in empty else f"question {i}" for i in range(n)]
