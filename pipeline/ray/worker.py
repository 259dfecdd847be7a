"""A worker of a distributed run: the local runner, fed by Ray Data, sharing one pace and one budget.

Each worker is one process of a Ray Data actor pool. It runs one :class:`~pipeline.runner.Fanout`
for its whole life (so its ``concurrency`` calls stay in flight across batch boundaries), fed
batch by batch by :meth:`Worker.__call__`, with three parts swapped for shared ones:

- :class:`LeasedLimiter`: grants leased from the coordinator actor, a few at a time;
- :class:`SharedBudget`: ``max_cost`` reservations held by the coordinator (only with a cap);
- :class:`LedgerView`: writes go to the worker's own shard of the job's ledger; reads see the
  ledger and every shard, so a batch that Ray runs again (its worker died) finds what was paid.

A batch's rows come back with the same result columns as a local run's output, read from the
ledger by content key once every row of the batch has its outcome (or the job stopped).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import queue
import secrets
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import polars as pl
import pyarrow as pa

from .._tuning import steady_gc_for_life
from ..config import Job
from ..connect import Connection
from ..dataset import PROMPT, ROW
from ..errors import BudgetExceeded, MomoError, WriteError, error_for
from ..journal import COMMIT_SECONDS
from ..ledger import DB_NAME, FINAL, RETRY, SENT, SHARDS, Entry, Ledger, _connect, take_over_journal
from ..plan import FIRST, KEY, OCC, key_column, make_keyer, make_task, output_columns, prompt_expr
from ..providers.base import Price, PromptRequest
from ..result import RowResult, Unfinished
from ..retry import busy_backoff
from ..runner import Caller, Fanout, RunStats, Stop
from ..sink import OutcomeReader, record_schema, with_outcomes
from .coordinator import Headers

# how final an entry is when the same key is in several files (as in Ledger.absorb)
_RANK = {FINAL: 3, 1: 2, RETRY: 1, 0: 0}


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, sent once to each worker process (the key stays in ``connection``,
    whose repr hides it)."""

    job: Job
    connection: Connection  # where the calls go, with which key (its repr hides the key)
    coordinator: Any  # the coordinator's actor handle
    ledger_root: Path  # <output>.ledger, on storage every worker can reach
    run: int  # the driver's run number in the job's ledger
    price: Price | None  # for the worst case of a call, when there is a cap
    cap: float | None
    concurrency: int
    lateness: float  # how late a leased grant may still be used (see coordinator.lateness)
    lease: int = 64  # grants asked for first (then as many as the worker uses in time: LeaseSize)
    backoff: tuple[float, float] = (0.5, 30.0)
    # the collector settings of ``momo-batch run`` for the worker's process, for good: only where
    # the process is the job's own (a Ray actor), not a caller's interpreter (tests run a Worker inline)
    tune_gc: bool = False


class LeaseSize:
    """How many grants to ask for: as many as this worker will use while they are fresh.

    A grant used more than ``lateness`` after its time is dropped, so a lease larger than what
    the worker uses in that time only comes back as drops (and counts as sent in the
    coordinator's logs); a smaller one costs a round trip to the coordinator actor more often
    (~1-2 ms of Ray's CPU each, across both processes). The size follows the pace at which the
    last lease was used: the grants used in half of ``lateness``, growing at most
    twofold a lease (the first grants of a run go all at once, as every call starts)."""

    MIN, MAX = 8, 1024

    def __init__(self, first: int, lateness: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.size = first
        self._lateness = lateness
        self._clock = clock
        self._since: float | None = None  # when the last lease came
        self.used = 0  # its grants used so far

    def leased(self) -> None:
        self._since = self._clock()
        self.used = 0

    def next(self) -> int:
        """The size of the lease to ask for now (the last one is used up, or its grants too late)."""
        if self._since is not None:
            pace = self.used / max(self._clock() - self._since, 1e-3)
            self.size = max(self.MIN, min(self.MAX, 2 * self.size, round(pace * self._lateness / 2)))
        return self.size


class LeasedLimiter:
    """The :class:`~pipeline.runner.Pacer` of a worker: grants leased from the coordinator.

    Successes (with their rate-limit headers) ride along with the next lease; a 429 goes at once,
    and the grants still held are dropped, as they were computed before the slow-down."""

    def __init__(self, coordinator: Any, stop: SharedStop, *, size: int, lateness: float) -> None:
        self._coordinator = coordinator
        self._stop = stop
        self.size = LeaseSize(size, lateness)
        self._lateness = lateness
        self._slots: collections.deque[float] = collections.deque()
        self._refill = anyio.Lock()
        self._successes: list[Headers] = []
        self.pending: list[Any] = []
        self.dropped = 0  # grants that came too late to use
        self._granted = 0

    @property
    def patience(self) -> float:
        """429s are the coordinator's to pace; a row keeps retrying them this long (5 minutes)."""
        return 300.0

    def learned(self) -> dict[str, float | int | None]:
        return {}  # the coordinator's limiter learns; a worker only holds leases

    def grant_now(self) -> int | None:
        """A leased slot that is due now and not too late; else ``None`` (``acquire`` waits)."""
        if self._slots and 0 <= time.time() - self._slots[0] <= self._lateness:
            self._slots.popleft()
            self.size.used += 1
            self._granted += 1
            return self._granted
        return None

    async def acquire(self) -> int:
        while True:
            if not self._slots:
                async with self._refill:  # one lease at a time; the others wait for its grants
                    if not self._slots:
                        await self._lease()
                continue
            slot = self._slots.popleft()
            wait = slot - time.time()
            if wait > 0:
                await anyio.sleep(wait)
            if time.time() - slot <= self._lateness:
                self.size.used += 1
                self._granted += 1
                return self._granted
            self.dropped += 1  # sent now, it would crowd the window of the grants after it

    async def _lease(self) -> None:
        successes, self._successes = self._successes, []
        lease = await self._coordinator.lease.remote(self.size.next(), successes)
        self.size.leased()
        if lease.stop is not None:
            self._stop.learn(*lease.stop)
            await anyio.lowlevel.checkpoint()  # the stop cancelled the wait this runs in
        self._slots.extend(lease.slots)

    def on_success(self, limit: int | None = None, remaining: int | None = None,
                   reset: float | None = None, *, grant: int | None = None) -> None:
        self._successes.append((limit, remaining, reset))

    def on_rate_limited(self, retry_after: float | None = None, limit: int | None = None,
                        remaining: int | None = None, reset: float | None = None, *,
                        grant: int | None = None, stated: tuple[int, float, bool] | None = None) -> None:
        self._slots.clear()
        self.pending.append(self._coordinator.rate_limited.remote(retry_after, limit, remaining, reset, stated))


class SharedBudget:
    """The :class:`~pipeline.runner.Purse` of a worker: reservations held by the coordinator."""

    def __init__(self, coordinator: Any, cap: float | None) -> None:
        self.cap = cap
        self._coordinator = coordinator
        self.pending: list[Any] = []

    def hold_now(self, worst: float) -> float | None:
        return 0.0 if self.cap is None else None

    async def reserve(self, worst: float) -> float:
        if (held := self.hold_now(worst)) is not None:
            return held
        held = await self._coordinator.reserve.remote(worst)
        if isinstance(held, str):
            raise BudgetExceeded(held)
        return float(held)

    def settle(self, held: float, actual: float | None) -> None:
        if self.cap is not None:
            self.pending.append(self._coordinator.settle.remote(held, actual))

    def release(self, held: float) -> None:
        self.settle(held, 0.0)


class SharedStop(Stop):
    """A worker's :class:`~pipeline.runner.Stop` that tells the coordinator, and learns from it."""

    def __init__(self, coordinator: Any) -> None:
        super().__init__()
        self._coordinator = coordinator
        self.pending: list[Any] = []

    def soft(self, exc: MomoError) -> None:
        first = self.reason is None
        super().soft(exc)
        if first:
            self.pending.append(self._coordinator.stop.remote(exc.code, str(exc), False))

    def now(self, exc: MomoError) -> None:
        super().now(exc)
        self.pending.append(self._coordinator.stop.remote(exc.code, str(exc), True))

    def learn(self, code: str, message: str, hard: bool) -> None:
        """Another worker (or the driver) stopped the job."""
        exc = error_for(code, message)
        if hard and not self.hard:
            Stop.now(self, exc)
        elif not self.stopped:
            Stop.soft(self, exc)


class LedgerView:
    """A worker's :class:`~pipeline.runner.Record`: its own shard for writing; for reading, the
    job's ledger and the shards of the workers on this machine (the most final entry of a key wins).

    The job's ledger does not change while workers run (the driver folds it first), so it is read
    immutable: no lock, no shared memory, safe on a network filesystem. A shard changes all the
    time and SQLite's write-ahead log needs its readers on the writer's machine: shards of other
    machines are not read (a batch that Ray runs again elsewhere may pay again for what the dead
    worker had finished of it; the driver merges every shard when the run ends).

    A shard writes through a journal and commits every :data:`~pipeline.journal.COMMIT_SECONDS`
    (the Engine commits on a clock too, so an idle worker's last rows do not wait for its next),
    and other workers read only what it committed. Two cases:

    - a live worker's answer reaches the others up to 50 ms after it is recorded. A row another
      worker asks in that time is paid twice; the same was, and is, true of a row the first has in
      flight (calls in flight are not shared between workers), which lasts a call's latency (50 ms
      to minutes): the 50 ms widen that window, they do not open a new kind of duplicate. Within
      one worker nothing changes (its reads see its own open transaction).
    - a killed worker's last rows may be in its journal only: each look (once per batch) applies
      the journal of any shard whose writer's lock is free (:func:`~pipeline.ledger.take_over_journal`)
      before this worker reads, so a batch Ray runs again here does not pay for them again."""

    def __init__(self, own: Ledger, root: Path, machine: str) -> None:
        self.own = own
        self.run = own.run
        self.root = root
        self.machine = machine  # shard names start with it
        self._others: dict[Path, Ledger] = {}

    def _stores(self, *, look: bool = False) -> list[Ledger]:
        """The files to read; ``look``: see whether workers started since (once per batch)."""
        if look:
            main = self.root / DB_NAME
            if main not in self._others and main.exists():
                self._others[main] = Ledger(self.root, _connect(main, readonly=True, immutable=True), None, 0)
            for path in sorted((self.root / SHARDS).glob(f"{self.machine}-*.sqlite")):
                if path == self.own.path:
                    continue
                # a worker that died may have left rows in its journal only; the driver applies
                # any this leaves (another look, the end of the run): a failure costs dedup, not rows
                with contextlib.suppress(OSError, sqlite3.Error):
                    take_over_journal(path)
                if path not in self._others:
                    self._others[path] = Ledger(path.parent, _connect(path, readonly=True), None, 0, path=path)
        return [self.own, *self._others.values()]

    # -- reading across the files ------------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        best: Entry | None = None
        for store in self._stores():
            entry = store.get(key)
            if entry is not None and (best is None or _RANK[entry.state] > _RANK[best.state]):
                best = entry
        return best

    def states(self, keys: Sequence[str]) -> dict[str, tuple[int, int]]:
        found: dict[str, tuple[int, int]] = {}
        for store in self._stores(look=True):
            for key, state in store.states(keys).items():
                if key not in found or _RANK[state[0]] > _RANK[found[key][0]]:
                    found[key] = state
        return found

    def outcomes(self, keys: Sequence[str]) -> pl.DataFrame:
        parts = [store.outcomes(keys) for store in self._stores()]
        both = pl.concat(parts)
        # a final outcome (2) beats one worth retrying (3)
        return both.sort(pl.col("state") == FINAL, descending=True).unique("key", keep="first")

    # -- writing to the worker's own shard ---------------------------------------------------
    def sent(self, key: str, held: float) -> None:
        self.own.sent(key, held)

    def not_charged(self, key: str, held: float, *, before: int | None = SENT) -> None:
        self.own.not_charged(key, held, before=before)

    def answered(self, key: str, answer: dict[str, Any], paid: float, held: float) -> None:
        self.own.answered(key, answer, paid, held)

    def outcome(self, key: str, record: dict[str, Any], *, final: bool, paid: float, held: float) -> None:
        self.own.outcome(key, record, final=final, paid=paid, held=held)

    @property
    def abandoned(self) -> int:
        return self.own.abandoned

    def commit(self) -> None:
        self.own.commit()

    def flush(self) -> None:
        self.own.flush()

    def grouping(self) -> contextlib.AbstractContextManager[None]:
        return self.own.grouping()

    def close(self) -> None:
        for store in self._others.values():
            store.close()
        self.own.close()


class _Batch:
    """A batch waiting for its keys' outcomes: one event, set when the last of them is known (a
    wait a key would make the batch's task wake once a key, a turn of the event loop each)."""

    def __init__(self) -> None:
        self.left = 0  # keys without an outcome yet
        self.done = anyio.Event()

    def one_less(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.done.set()


class _Waiter:
    """The batches waiting for one key's outcome, and whether it is known."""

    def __init__(self) -> None:
        self.settled = False
        self.batches: list[_Batch] = []


_COUNTED = [f.name for f in fields(RunStats) if f.name not in ("total", "started", "first_call", "last_call")]


class Engine:
    """One worker's runner: a Fanout that lives as long as the process, and the batches it serves."""

    def __init__(self, spec: WorkerSpec) -> None:
        job = spec.job
        coordinator = spec.coordinator
        self.spec = spec
        self.provider = spec.connection.open(job.provider, max_connections=spec.concurrency)
        self.keyer = make_keyer(job, self.provider.endpoint)
        self.prompt, _ = prompt_expr(job)
        task = make_task(job)
        self.schema = record_schema(task.extra_schema)
        self.result_columns = output_columns(job, task)
        self.stop = SharedStop(coordinator)
        self.stats = RunStats()
        machine = socket.gethostname()
        name = f"{machine}-{os.getpid()}-{secrets.token_hex(4)}.sqlite"
        self.ledger = LedgerView(Ledger.shard(spec.ledger_root / SHARDS / name, spec.run), spec.ledger_root,
                                 machine)
        self.limiter = LeasedLimiter(coordinator, self.stop, size=spec.lease, lateness=spec.lateness)
        self.budget = SharedBudget(coordinator, spec.cap)
        worst = None
        if spec.price is not None and spec.cap is not None:
            from ..pricing import worst_cost_fn  # the tokenizer: only for capped jobs

            worst = worst_cost_fn(job, spec.price)
        p = job.provider
        caller = Caller(self.provider, limiter=self.limiter, budget=self.budget, stats=self.stats,
                        stop=self.stop, max_attempts=job.limits.max_attempts,
                        request=PromptRequest(prompt="", temperature=p.temperature, max_tokens=p.max_tokens,
                                              stream=p.stream),
                        keyer=self.keyer, ledger=self.ledger, worst_cost=worst, backoff=spec.backoff,
                        busy_backoff=busy_backoff(job.limits.window_seconds), max_wait=job.limits.max_wait_seconds)
        self.inbox: queue.Queue[pl.DataFrame | None] = queue.Queue()
        self.fan = Fanout(task, caller, self.ledger, lambda: _drain(self.inbox), spec.concurrency,
                          on_result=self._finished)
        self.waiters: dict[str, _Waiter] = {}
        self.row_keys: dict[int, str] = {}
        self.next_row = 0
        self.failure: BaseException | None = None
        self._reported = {name: 0.0 for name in _COUNTED}
        self._reports = 0  # batches reported: the first ones ask whether the job stopped

    async def serve(self) -> None:
        """Run the Fanout until the job stops (it ends when its reader sees the stop)."""
        try:
            async with anyio.create_task_group() as clock:
                clock.start_soon(self._commit_on_a_clock)
                await self.fan.run()
                clock.cancel_scope.cancel()
        except BaseException as exc:  # a bug: wake every batch, and fail them (Ray reports it)
            self.failure = exc
            raise
        finally:  # this worker only: the job goes on in the others (Ray reports a failure)
            self.stop.learn("WORKER_ENDED", "the worker's runner ended", False)
            for waiter in self.waiters.values():
                for batch in waiter.batches:
                    batch.done.set()

    async def close(self) -> None:
        """End the runner (its reader takes no more batches), then close the client and the files."""
        self.inbox.put(None)
        with contextlib.suppress(Exception):
            await self.provider.aclose()
        self.ledger.close()

    async def _commit_on_a_clock(self) -> None:
        """Commit the shard every ``COMMIT_SECONDS`` whether rows finish or not (the Fanout commits
        when one does): what this worker recorded reaches the other workers within that time."""
        while True:
            await anyio.sleep(COMMIT_SECONDS)
            self._commit(self.ledger.commit)

    def _commit(self, commit: Callable[[], None]) -> None:
        try:
            commit()
        except WriteError as exc:  # as the Fanout does: the job stops, what was journaled is kept
            self.stop.soft(exc)

    def _finished(self, result: RowResult) -> None:
        key = self.row_keys.get(result.row)
        if key is not None:
            self._settle(key)

    def _settle(self, key: str) -> None:
        """``key``'s outcome is known: one less to wait for in each batch that asks it."""
        waiter = self.waiters.get(key)
        if waiter is not None and not waiter.settled:
            waiter.settled = True
            for batch in waiter.batches:
                batch.one_less()

    async def run_batch(self, batch: pa.Table) -> pa.Table:
        """The batch's rows with their result columns, once each has an outcome or the job stopped."""
        if not self.stop.stopped and not self._reports:
            # later batches learn a stop from the answer to the report before them (and from
            # every lease): one round trip a batch, not two
            reason = await self.spec.coordinator.stop_reason.remote()
            if reason is not None:
                self.stop.learn(*reason)
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        prompt = frame.select(self.prompt)[PROMPT]
        prompts, keys = prompt.to_list(), key_column(self.keyer, prompt).to_list()
        rows = list(range(self.next_row, self.next_row + frame.height))
        self.next_row += frame.height
        wanted = list(dict.fromkeys(k for k in keys if k is not None))
        waits = _Batch()
        try:
            await self._wait_for(waits, wanted, rows, prompts, keys)
        finally:
            self._forget(waits, wanted, rows)
        # the shard's database holds the batch before the driver has it: the driver may merge
        # the shard at the end of the run while this process lives (Ray ends it afterwards)
        self._commit(self.ledger.flush)
        await self._report()
        if self.failure is not None:
            raise RuntimeError("the worker's runner failed") from self.failure
        keyed = frame.with_columns(pl.Series(KEY, keys, pl.String), pl.lit(True).alias(FIRST))
        reason = self.stop.reason or Unfinished("NOT_RUN", "not run (job ended before this row)")
        out = with_outcomes(keyed, OutcomeReader(self.ledger, self.schema), reason)
        return out.select(*batch.column_names, *self.result_columns).to_arrow()

    async def _wait_for(self, waits: _Batch, wanted: list[str], rows: list[int], prompts: list[str | None],
                        keys: list[str | None]) -> None:
        for key in wanted:  # before the ledger is read: an outcome recorded from now on counts
            waiter = self.waiters.setdefault(key, _Waiter())
            waiter.batches.append(waits)
            waits.left += not waiter.settled
        for row, row_key in zip(rows, keys, strict=True):
            if row_key is not None:
                self.row_keys[row] = row_key
        if not self.stop.stopped:
            self.inbox.put(pl.DataFrame({ROW: rows, PROMPT: prompts, KEY: keys, OCC: [0] * len(rows)},
                                        schema={ROW: pl.UInt32, PROMPT: pl.String, KEY: pl.String,
                                                OCC: pl.UInt32}))
        run = self.ledger.run
        for key, (state, by) in self.ledger.states(wanted).items():
            if state == FINAL or (state == RETRY and by == run):  # what the Fanout will not send again
                self._settle(key)
        if waits.left == 0:
            waits.done.set()
        with self.stop.waiting():
            await waits.done.wait()

    def _forget(self, waits: _Batch, wanted: list[str], rows: list[int]) -> None:
        for row in rows:
            self.row_keys.pop(row, None)
        for key in wanted:
            waiter = self.waiters[key]
            waiter.batches.remove(waits)
            if not waiter.batches:
                del self.waiters[key]

    async def _report(self) -> None:
        """Counters since the last batch, and every message still on its way to the coordinator."""
        s = self.stats
        delta = {name: float(getattr(s, name)) - self._reported[name] for name in _COUNTED}
        self._reported = {name: float(getattr(s, name)) for name in _COUNTED}
        delta["dropped_grants"] = self.limiter.dropped
        self.limiter.dropped = 0
        if s.first_call is not None and s.last_call is not None:
            offset = time.time() - time.monotonic()  # the driver compares wall-clock times
            delta["first_call_min"] = s.first_call + offset
            delta["last_call_max"] = s.last_call + offset
        pending = [*self.limiter.pending, *self.budget.pending, *self.stop.pending]
        report = self.spec.coordinator.add.remote(delta)
        self.limiter.pending, self.budget.pending, self.stop.pending = [], [], []
        for ref in pending:
            await ref
        reason = await report
        self._reports += 1
        if reason is not None:
            self.stop.learn(*reason)


def _drain(inbox: queue.Queue[pl.DataFrame | None]) -> Iterator[pl.DataFrame]:
    """Batches as they arrive (the Fanout's reader waits for them in a thread)."""
    while (batch := inbox.get()) is not None:
        yield batch


class Worker:
    """The Ray Data callable class (``map_batches`` with an actor pool). No I/O until the first batch."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self._engine: Engine | None = None
        self._serving: asyncio.Task[None] | None = None

    async def __call__(self, batch: pa.Table) -> pa.Table:
        if self._engine is None:
            if self.spec.tune_gc:
                steady_gc_for_life()
            self._engine = Engine(self.spec)
            # the engine outlives each call: it runs on the event loop Ray Data keeps for this actor
            self._serving = asyncio.get_running_loop().create_task(self._engine.serve())
        return await self._engine.run_batch(batch)

    async def close(self) -> None:
        """For a caller that runs the worker itself (tests): stop its runner and wait for it."""
        if self._engine is not None and self._serving is not None:
            self._engine.inbox.put(None)
            await self._serving
            await self._engine.close()
