"""Fan-out: reader → bounded stream → N workers (limiter, budget, call with retries) → ledger.

Structured concurrency throughout: one task group owns the reader and the workers; a hard stop
(bad key, unknown agent, a second Ctrl-C) cancels that group; a soft stop (balance gone, budget
cap, Ctrl-C, SIGTERM, a failed write) stops the reader, wakes every task that only waits to send,
and lets calls in flight finish. Either way, everything recorded stays, and
the output is finalised with every row once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import polars as pl
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from tenacity import RetryCallState

from .dataset import PROMPT, ROW
from .errors import (
    Action,
    APIError,
    BudgetExceeded,
    MalformedResponse,
    MomoError,
    RateLimited,
    WaitTooLong,
    WriteError,
)
from .keys import KEY, OCC, Keyer
from .ledger import FINAL, RETRY, SENT, Cache, Entry
from .outcome import RunStats as RunStats  # counted here, reported there
from .providers.base import CallResult, PromptRequest, Provider, check_reported
from .result import RowResult, Unfinished
from .retry import busy_backoff, retry_policy, worth_retrying


@dataclass
class RowCalls:
    """One row's calls: its key, and what they added up to (a label row may make several)."""

    key: str = ""  # the row's content key: where its outcome is recorded
    occurrence: int = 0  # which repeat of its prompt this row is (0 unless dedup is off)
    unseen: bool = False  # the ledger had no entry under ``key`` when the reader looked
    attempts: int = 0
    calls: int = 0
    cached_calls: int = 0
    tokens_used: int | None = 0
    cost: float | None = 0.0
    prompt_tokens: int | None = 0
    completion_tokens: int | None = 0
    latency_ms: float = 0.0
    last: CallResult | None = None
    # paid by calls whose answer is recorded with the row's outcome, not on its own (plain rows)
    unrecorded_cost: float = 0.0
    unrecorded_held: float = 0.0

    def add(self, res: CallResult, latency_ms: float, *, cached: bool = False) -> None:
        """Count one answer; one from the cache costs this job nothing."""
        self.calls += 1
        self.cached_calls += cached
        self.latency_ms += latency_ms
        self.last = res
        self.tokens_used = _plus(self.tokens_used, res.tokens_used)
        self.cost = _plus(self.cost, 0.0 if cached else res.cost)
        self.prompt_tokens = _plus(self.prompt_tokens, res.prompt_tokens)
        self.completion_tokens = _plus(self.completion_tokens, res.completion_tokens)

    def result(self, row: int, **fields: Any) -> RowResult:
        spent = self.calls > 0
        return RowResult(
            row=row,
            tokens_used=self.tokens_used if spent else None,
            cost=self.cost if spent else None,
            prompt_tokens=self.prompt_tokens if spent else None,
            completion_tokens=self.completion_tokens if spent else None,
            attempts=self.attempts,
            latency_ms=round(self.latency_ms, 3) if spent else None,
            request_id=self.last.request_id if self.last else None,
            cached=spent and self.cached_calls == self.calls,
            **fields,
        )


def _plus(a: Any, b: Any) -> Any:
    return None if a is None or b is None else a + b


class Stop:
    """Why the job stops early, if it does; and the waits that a stop cuts short.

    A soft stop (balance gone, cap reached, first Ctrl-C or SIGTERM) lets calls in flight finish
    and be recorded, but wakes every task that is only *waiting* to send (for the limiter, the
    budget, a retry's backoff), so nothing new goes out. A hard stop cancels the calls too.
    """

    def __init__(self) -> None:
        self.reason: Unfinished | None = None
        self.error: MomoError | None = None
        self.hard = False
        self.scope: anyio.CancelScope | None = None
        self._waiting: set[anyio.CancelScope] = set()

    @property
    def stopped(self) -> bool:
        return self.reason is not None

    def soft(self, exc: MomoError) -> None:
        """Stop sending because of ``exc`` (the rows not run are recorded with its code)."""
        if self.reason is None:
            self.reason = Unfinished(exc.code, f"not run: {exc} (job stopped; run again to resume)")
            self.error = exc
        for scope in list(self._waiting):
            scope.cancel()

    def now(self, exc: MomoError) -> None:
        self.soft(exc)
        self.hard = True
        if self.scope is not None:
            self.scope.cancel()

    @contextlib.contextmanager
    def waiting(self) -> Iterator[anyio.CancelScope]:
        """A wait that a stop ends at once (check :attr:`stopped` after it)."""
        with anyio.CancelScope() as scope:
            if self.stopped:
                scope.cancel()
            self._waiting.add(scope)
            try:
                yield scope
            finally:
                self._waiting.discard(scope)

    async def sleep(self, seconds: float) -> None:
        """A retry's backoff: cut short by a stop (the next attempt then is not sent)."""
        with self.waiting():
            await anyio.sleep(seconds)


class Pacer(Protocol):
    """When a call may go out, and what the server said about the pace: a
    :class:`~pipeline.limiter.RateLimiter` in one process, a lease from a shared one across processes."""

    @property
    def patience(self) -> float:
        """How long a row keeps retrying 429s before it gives up."""
        ...

    async def acquire(self) -> int:
        """Wait for a grant; returns its number (handed back with what the server said)."""
        ...

    def grant_now(self) -> int | None:
        """A grant if one is free this instant, without waiting; else ``None`` (then ``acquire``)."""
        ...

    def on_success(self, limit: int | None = None, remaining: int | None = None,
                   reset: float | None = None, *, grant: int | None = None) -> None: ...

    def on_rate_limited(self, retry_after: float | None = None, limit: int | None = None,
                        remaining: int | None = None, reset: float | None = None, *,
                        grant: int | None = None, stated: tuple[int, float, bool] | None = None) -> None: ...

    def learned(self) -> dict[str, float | int | None]:
        """What the pacing learned of the server, for the run report."""
        ...


class Purse(Protocol):
    """Reservations against ``max_cost``: a :class:`~pipeline.budget.Budget`, or a shared one."""

    cap: float | None

    async def reserve(self, worst: float) -> float: ...

    def hold_now(self, worst: float) -> float | None:
        """What ``reserve`` returns, when it would not wait; else ``None`` (then ``reserve``)."""
        ...

    def settle(self, held: float, actual: float | None) -> None: ...

    def release(self, held: float) -> None: ...


class Record(Protocol):
    """What the runner reads and writes by content key: a :class:`~pipeline.ledger.Ledger`, or a
    worker's view of a job's ledger and its shards."""

    run: int

    def get(self, key: str) -> Entry | None: ...

    def states(self, keys: Sequence[str]) -> dict[str, tuple[int, int]]: ...

    def sent(self, key: str, held: float) -> None: ...

    def not_charged(self, key: str, held: float, *, before: int | None = SENT) -> None: ...

    def answered(self, key: str, answer: dict[str, Any], paid: float, held: float) -> None: ...

    def outcome(self, key: str, record: dict[str, Any], *, final: bool, paid: float, held: float) -> None: ...

    @property
    def abandoned(self) -> int:
        """Transactions rolled back after a failed write (the outcomes they held are lost)."""
        ...

    def commit(self) -> None:
        """Make every write so far durable."""
        ...

    def grouping(self) -> contextlib.AbstractContextManager[None]:
        """While open, outcomes wait for the next commit; ``sent`` marks never do."""
        ...


class _NotSent(Exception):
    """The job stopped before this call was sent."""


WorstCost = Callable[[str], float]


def answer_record(result: CallResult, latency_ms: float | None) -> dict[str, Any]:
    """How a call's answer is kept in the ledger and the cache (the names of the output columns)."""
    record = {
        "response": result.content,
        "request_id": result.request_id,
        "tokens_used": result.tokens_used,
        "cost": result.cost,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "latency_ms": latency_ms,
    }
    return {k: v for k, v in record.items() if v is not None}


def answer_from_record(record: dict[str, Any]) -> CallResult | None:
    """A recorded answer (a call's, or a plain row's ok outcome) as a call result."""
    if record.get("response") is None or record.get("status", "ok") != "ok":
        return None
    return CallResult(content=record["response"], request_id=record.get("request_id"),
                      tokens_used=record.get("tokens_used"), cost=record.get("cost"),
                      prompt_tokens=record.get("prompt_tokens"),
                      completion_tokens=record.get("completion_tokens"))


def _believable(result: CallResult | None) -> CallResult | None:
    """A shared cache's answer, unless its figures are not numbers ≥ 0 (another version of this
    program, or another program, wrote it): then it is asked again."""
    try:
        return None if result is None else check_reported(result)
    except MalformedResponse:
        return None


class Caller:
    """One call as the tasks see it: ledger, cache, budget, limiter, retries and accounting."""

    def __init__(
        self,
        provider: Provider,
        *,
        limiter: Pacer,
        budget: Purse,
        stats: RunStats,
        stop: Stop,
        max_attempts: int,
        request: PromptRequest,
        keyer: Keyer,
        ledger: Record,
        cache: Cache | None = None,
        worst_cost: WorstCost | None = None,
        backoff: tuple[float, float] = (0.5, 30.0),
        busy_backoff: tuple[float, float] = busy_backoff(60.0),
        max_wait: float | None = None,
    ) -> None:
        self.provider = provider
        self.max_wait = max_wait  # a longer server-requested pause stops the job (None: no bound)
        self.limiter = limiter
        self.budget = budget
        self.stats = stats
        self.stop = stop
        self.max_attempts = max_attempts
        self.request = request
        self.keyer = keyer
        self.ledger = ledger
        self.cache = cache
        self.worst_cost = worst_cost
        self.backoff = backoff
        self.busy_backoff = busy_backoff  # a saturated upstream's own, in the job's time (see retry.py)
        self._sent_before: set[str] = set()  # keys a dead run sent without an answer: resending counts
        # each key being sent: its ledger state before (None: no entry), put back if the call is refused
        self._before: dict[str, int | None] = {}

    def sibling(self, provider: Provider, *, request: PromptRequest, keyer: Keyer,
                worst_cost: WorstCost | None) -> Caller:
        """A caller for another target of the same job (a label job's escalation): its own provider,
        request settings and keys, the same limiter, budget, stats, stop, ledger and cache."""
        twin = Caller(provider, limiter=self.limiter, budget=self.budget, stats=self.stats, stop=self.stop,
                      max_attempts=self.max_attempts, request=request, keyer=keyer, ledger=self.ledger,
                      cache=self.cache, worst_cost=worst_cost, backoff=self.backoff,
                      busy_backoff=self.busy_backoff, max_wait=self.max_wait)
        twin._sent_before = self._sent_before
        twin._before = self._before
        return twin

    async def __call__(self, prompt: str, acc: RowCalls, *, temperature: float | None = None,
                       vote: int = 0, reask: int = 0, final: bool = False) -> CallResult:
        """One answer to ``prompt``: from the ledger or the cache if recorded, else paid for.

        ``final``: the caller records this answer as the row's outcome at once (a plain row),
        so it is not recorded on its own (one write per row instead of two).
        """
        request = PromptRequest(
            prompt=prompt,
            temperature=self.request.temperature if temperature is None else temperature,
            max_tokens=self.request.max_tokens,
            stream=self.request.stream,
        )
        key = self.keyer.request(prompt, request.temperature, vote=vote, reask=reask,
                                 occurrence=acc.occurrence)
        reused = self._reuse(key, acc, final)
        if reused is None and self.cache is not None:
            reused = await self._claimed(key, acc, final)
        if reused is not None:
            self._before.pop(key, None)
            return reused
        try:
            result, held, latency = await self._send(request, acc, key)
            answer = answer_record(result, round(latency, 3))
            if final:
                acc.unrecorded_cost += result.cost or 0.0
                acc.unrecorded_held += held
            else:
                self.ledger.answered(key, answer, paid=result.cost or 0.0, held=held)
            if self.cache is not None:
                self.cache.put(key, answer)  # before the claim goes: a job waiting for it finds it
        finally:
            self._before.pop(key, None)
            if self.cache is not None:
                self.cache.release(key)
        return result

    async def _claimed(self, key: str, acc: RowCalls, final: bool) -> CallResult | None:
        """With a shared cache: claim ``key`` before paying for it. When another job (process) is
        asking it now, wait for that job, and take its answer from the cache (``None``: it got none,
        and the claim is this job's now)."""
        assert self.cache is not None
        if not self.cache.claim_now(key):
            with self.stop.waiting():
                await self.cache.claim(key)
        # looked again once claimed: the other job may have put its answer since the first look
        found = self._from_cache(key, acc, final)
        if found is not None:
            self.cache.release(key)
        return found

    async def _send(self, request: PromptRequest, acc: RowCalls, key: str) -> tuple[CallResult, float, float]:
        try:  # most calls succeed at once: no retry machinery for them (~34 µs of CPU each)
            return await self._attempt(request, acc, key)
        except MomoError as first:
            # a 429 is retried however few attempts: it does not use them up (see retry.py)
            if not worth_retrying(first) or (self.max_attempts <= 1 and not isinstance(first, RateLimited)):
                raise
            return await self._retry(request, acc, key, first)

    async def _retry(self, request: PromptRequest, acc: RowCalls, key: str,
                     first: MomoError) -> tuple[CallResult, float, float]:
        """The retry policy from its first attempt on, that attempt being the one that just failed
        (so attempt numbers, waits, ``Retry-After`` and the stop are exactly the policy's)."""
        policy = retry_policy(
            self.max_attempts,
            initial_wait=self.backoff[0],
            max_wait=self.backoff[1],
            rate_limited_for=self.limiter.patience,
            busy_wait=self.busy_backoff,
            before_sleep=self._count_retry,
            sleep=self.stop.sleep,
        )
        failed: MomoError | None = first
        async for attempt in policy:
            with attempt:
                if failed is not None:
                    exc, failed = failed, None
                    raise exc
                return await self._attempt(request, acc, key)
        raise AssertionError("unreachable: the policy re-raises the last error")

    def _reuse(self, key: str, acc: RowCalls, final: bool) -> CallResult | None:
        # a plain row's one call has the row's own key, which the reader found nowhere in the
        # ledger a moment ago: no lookup then (one statement per row less)
        entry = None if key == acc.key and acc.unseen else self.ledger.get(key)
        self._before[key] = None if entry is None else entry.state
        if entry is not None and entry.state == SENT and entry.run != self.ledger.run:
            self._sent_before.add(key)
        elif entry is not None and entry.record is not None:
            found = answer_from_record(entry.record)
            if found is not None:  # paid by an earlier run of this job (counted in its cost)
                acc.add(found, 0.0)
                return found
        return self._from_cache(key, acc, final)

    def _from_cache(self, key: str, acc: RowCalls, final: bool) -> CallResult | None:
        if self.cache is None:
            return None
        answer = self.cache.get(key)
        found = None if answer is None else _believable(answer_from_record(answer))
        if found is None:
            return None
        acc.add(found, 0.0, cached=True)
        self.stats.cached += 1
        self.stats.cache_saved += found.cost or 0.0
        if not final:
            self.ledger.answered(key, answer or {}, paid=0.0, held=0.0)
        return found

    def _count_retry(self, state: RetryCallState) -> None:
        self.stats.retries += 1

    async def _attempt(self, request: PromptRequest, acc: RowCalls, key: str) -> tuple[CallResult, float, float]:
        if self.stop.stopped:
            raise _NotSent
        # a cap of 0 is a cap (nothing may be spent), not "no cap"
        worst = self.worst_cost(request.prompt) if self.worst_cost and self.budget.cap is not None else 0.0
        held = self.budget.hold_now(worst)
        grant = self.limiter.grant_now() if held is not None else None
        if held is None or grant is None:  # only a wait needs a scope that a stop can cut short
            with self.stop.waiting():
                if held is None:
                    held = await self.budget.reserve(worst)
                grant = await self.limiter.acquire()
        if self.stop.stopped:
            if held is not None:
                self.budget.release(held)
            raise _NotSent
        assert held is not None
        try:
            self.ledger.sent(key, held)  # before it goes out: a crash from here on is "outcome unknown"
        except BaseException:
            self.budget.release(held)
            raise
        if key in self._sent_before:
            self._sent_before.discard(key)
            self.stats.resent += 1
        acc.attempts += 1
        self.stats.calls += 1
        now = time.monotonic()
        self.stats.first_call = self.stats.first_call or now
        self.stats.last_call = now
        try:
            result = check_reported(await self.provider.complete(request))
        except BaseException as exc:
            self._failed(key, held, exc, grant)
            raise
        latency = (time.monotonic() - now) * 1000
        self.budget.settle(held, result.cost)
        info = result.rate_limit
        if info is not None:
            self.limiter.on_success(info.limit, info.remaining, info.reset, grant=grant)
        else:
            self.limiter.on_success(grant=grant)
        acc.add(result, latency)
        self.stats.tokens += result.tokens_used or 0
        self.stats.cost += result.cost or 0.0
        self.stats.unknown_cost_calls += result.cost is None
        return result, held, latency

    def _server_pause(self, seconds: float | None) -> None:
        """A pause the server asked for: said on the progress line, or, longer than ``max_wait``,
        a soft stop (resumable) rather than a silent sleep of an hour."""
        if not seconds or seconds <= 0:
            return
        if self.max_wait is not None and seconds > self.max_wait:
            self.stop.soft(WaitTooLong(
                f"the server asked to wait {seconds:g} s (Retry-After), longer than limits.max_wait_seconds "
                f"= {self.max_wait:g} s; stopped without waiting: run again later to resume"))
            return
        self.stats.pause(seconds)

    def _failed(self, key: str, held: float, exc: BaseException, grant: int) -> None:
        if isinstance(exc, RateLimited):
            self.stats.rate_limited += 1
            self.limiter.on_rate_limited(exc.retry_after, None, exc.remaining, exc.reset, grant=grant,
                                         stated=exc.stated)
            self._server_pause(exc.retry_after)
        if not isinstance(exc, MomoError) or exc.may_have_been_charged:
            # the worst case stays spent, in this run's budget and in the ledger for the next
            self.budget.settle(held, None)
            self.stats.unknown_outcomes += 1
            self._before[key] = SENT  # a later refusal of the same key leaves this mark standing
            return
        self.budget.release(held)
        before = self._before.get(key, SENT)
        if held or before != SENT:  # refused (402, 401, 429, 4xx): not in flight for the next run
            with contextlib.suppress(WriteError):
                self.ledger.not_charged(key, held, before=before)


class RowTask(Protocol):
    """What a job does with one prompt (one call, or votes and re-asks for labels)."""

    extra_schema: dict[str, pl.DataType]

    async def bind(self, job: Any, provider: Provider, caller: Caller, *, capped: bool,
                   escalation_provider: Provider | None = None) -> RowTask:
        """The task for one run (a label job binds its escalation's caller here)."""
        ...

    async def run(self, prompt: str, call: Caller, acc: RowCalls, row: int) -> RowResult: ...


class PromptTask:
    """The plain job: one call per row, the response kept as it came."""

    extra_schema: dict[str, pl.DataType] = {}

    async def bind(self, job: Any, provider: Provider, caller: Caller, *, capped: bool,
                   escalation_provider: Provider | None = None) -> PromptTask:
        return self

    async def run(self, prompt: str, call: Caller, acc: RowCalls, row: int) -> RowResult:
        res = await call(prompt, acc, final=True)
        return acc.result(row, status="ok", response=res.content)


Batches = Callable[[], Iterator[pl.DataFrame]]
SETTLED_KEPT = 100_000  # final keys the reader remembers, so a repeated key is asked of the ledger once
Item = tuple[int, str, str, int, bool]  # row, prompt, key, occurrence, key not in the ledger


@dataclass
class Fanout:
    """Runs one job's rows through the workers. Build it, then ``await run()`` once.

    The reader sends each request once: a row whose key has a final outcome in the ledger, or
    is queued or in flight in this run, is not sent (dedup; the output joins it by key). The
    ledger is the safety net under that: a call whose answer is recorded is never paid again.
    """

    task: RowTask
    caller: Caller
    ledger: Record
    batches: Batches  # input batches with KEY and OCC (see :meth:`pipeline.plan.Plan.batches`)
    concurrency: int
    on_result: Callable[[RowResult], None] = lambda r: None
    only_rows: set[int] | None = None  # a pilot runs just these
    _live: set[str] = field(default_factory=set)  # queued or in flight
    _recent: set[str] = field(default_factory=set)  # finished since the reader's last look at the ledger
    _settled: dict[str, tuple[int, int]] = field(default_factory=dict)  # final keys seen lately: (state, run)
    # written, not yet committed, each with the ledger's count of abandoned transactions then
    _unreported: list[tuple[RowResult, int]] = field(default_factory=list)
    _written: anyio.Event | None = None  # set when the first of them is written

    async def run(self) -> None:
        stop = self.caller.stop
        send, receive = anyio.create_memory_object_stream[Item](self.concurrency * 2)
        with anyio.CancelScope() as scope, self.ledger.grouping():
            stop.scope = scope
            try:
                async with anyio.create_task_group() as committer:
                    committer.start_soon(self._commit_each_turn)
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._read, send)
                        for _ in range(self.concurrency):
                            tg.start_soon(self._work, receive.clone())
                        receive.close()
                    committer.cancel_scope.cancel()
            finally:
                self._commit()

    async def _commit_each_turn(self) -> None:
        """Commit the outcomes the workers wrote, in the turn of the event loop after the first of
        them (a "sent" mark in between commits them sooner), then count and report them: a row is
        reported once it is durable."""
        while True:
            self._written = anyio.Event()
            await self._written.wait()
            self._commit()

    def _commit(self) -> None:
        try:
            self.ledger.commit()
        except WriteError as exc:
            self.caller.stop.soft(exc)
        done, self._unreported = self._unreported, []
        lost = self.ledger.abandoned
        for result, abandoned in done:
            if abandoned == lost:  # else rolled back, as a crash loses it: its "sent" mark stands
                self.caller.stats.record(result)
                self.on_result(result)

    async def _read(self, send: MemoryObjectSendStream[Item]) -> None:
        async with send:
            it = self.batches()
            while not self.caller.stop.stopped:
                batch = await anyio.to_thread.run_sync(next, it, None)
                if batch is None:
                    return
                if not await self._feed(batch, send):
                    return

    async def _feed(self, batch: pl.DataFrame, send: MemoryObjectSendStream[Item]) -> bool:
        """Send the batch's requests that have no answer yet, each once; count the others. Rows
        are sorted by their key's state, a key at a time: a key repeated over many rows (or
        finished in an earlier run) costs its rows a vectorised count, not a Python step each."""
        stats, stop = self.caller.stats, self.caller.stop
        if self.only_rows is not None:
            batch = batch.filter(pl.col(ROW).is_in(list(self.only_rows)))
        for row in batch.filter(pl.col(KEY).is_null())[ROW].to_list():
            self._skipped(row)
        keyed = batch.filter(pl.col(KEY).is_not_null())
        elsewhere, new = self._sort(keyed[KEY].unique().to_list())
        self._recent.clear()
        keyed = keyed.with_columns(pl.col(KEY).is_in(elsewhere).alias("__done"),
                                   (pl.col(KEY).is_in(list(new)) & pl.col(KEY).is_first_distinct()).alias("__send"))

        def count(before: int | None = None) -> None:
            """Rows (before row ``before``) answered in an earlier run, or sharing another row's call."""
            rows = keyed if before is None else keyed.filter(pl.col(ROW) < before)
            done, sent = int(rows["__done"].sum()), int(rows["__send"].sum())
            stats.already_done += done
            stats.duplicates += rows.height - done - sent

        for row, prompt, key, occurrence in keyed.filter("__send").select(ROW, PROMPT, KEY, OCC).iter_rows():
            if stop.stopped:
                count(before=row)
                return False
            self._live.add(key)
            item = (row, prompt, key, occurrence, new[key])
            try:  # no turn of the event loop when there is room (see _next)
                send.send_nowait(item)
            except anyio.WouldBlock:
                await send.send(item)
        count()
        return True

    def _sort(self, keys: list[str]) -> tuple[list[str], dict[str, bool]]:
        """The batch's distinct keys by what becomes of their rows: answered in an earlier run
        (already done), asked in this one (queued, in flight or answered: duplicates), and to
        send (with whether the ledger has no entry for the key at all)."""
        run = self.ledger.run
        states = self.ledger.states([k for k in keys if k not in self._settled])
        for key, (state, by) in states.items():
            if state == FINAL or (state == RETRY and by == run):  # so for the rest of the run
                if len(self._settled) >= SETTLED_KEPT:
                    self._settled.clear()
                self._settled[key] = (state, by)
        elsewhere, new = [], {}
        for key in keys:
            entry = self._settled.get(key) or states.get(key)
            if key in self._live or key in self._recent or (entry is not None and entry[1] == run
                                                             and entry[0] >= FINAL):
                continue
            if entry is not None and entry[0] == FINAL:
                elsewhere.append(key)
            else:
                new[key] = entry is None
        return elsewhere, new

    def _skipped(self, row: int) -> None:
        result = RowResult(row=row, status="skipped", error_code="EMPTY_PROMPT",
                           error_message="prompt is null or empty: not sent")
        self.caller.stats.record(result)
        self.on_result(result)

    async def _work(self, receive: MemoryObjectReceiveStream[Item]) -> None:
        async with receive:
            while (item := await _next(receive)) is not None:
                row, prompt, key, occurrence, unseen = item
                if self.caller.stop.stopped:
                    self._live.discard(key)
                    continue  # drain: the reader is stopping too
                acc = RowCalls(key=key, occurrence=occurrence, unseen=unseen)
                result = await self._one(row, prompt, acc)
                self._live.discard(key)
                self._recent.add(key)
                if result is not None:
                    self._emit(result, acc)

    def _emit(self, result: RowResult, acc: RowCalls) -> None:
        try:
            self.ledger.outcome(acc.key, result.to_record(), final=result.finished,
                                paid=acc.unrecorded_cost, held=acc.unrecorded_held)
        except WriteError as exc:
            self.caller.stop.soft(exc)
            return
        self._unreported.append((result, self.ledger.abandoned))
        if self._written is not None:
            self._written.set()

    async def _one(self, row: int, prompt: str, acc: RowCalls) -> RowResult | None:
        stop = self.caller.stop
        try:
            return await self.task.run(prompt, self.caller, acc, row)
        except _NotSent:
            return _spent_or_none(acc, row, stop)
        except (APIError, BudgetExceeded, WriteError) as exc:  # each error class says what to do
            match exc.action:
                case Action.RETRY | Action.FAIL_ROW:  # retries spent, or retrying cannot help
                    result = acc.result(row, status="error", error_code=exc.code, error_message=str(exc),
                                        final=exc.final)
                    # the relay's id of the failed request, to find it in the relay's own log
                    result.request_id = getattr(exc, "request_id", None) or result.request_id
                    return result
                case Action.STOP_SOFT:
                    stop.soft(exc)
                    return None if isinstance(exc, WriteError) else _spent_or_none(acc, row, stop)
                case Action.STOP_NOW:
                    stop.now(exc)
                    return None


async def _next(receive: MemoryObjectReceiveStream[Item]) -> Item | None:
    """The next row, without a turn of the event loop when one is waiting (``async for`` takes a
    turn per item, and the outcome just written would be committed on its own instead of with
    the next call's "sent" mark); ``None`` once the reader is done."""
    try:
        return receive.receive_nowait()
    except anyio.WouldBlock:
        try:
            return await receive.receive()
        except anyio.EndOfStream:
            return None
    except anyio.EndOfStream:
        return None


def _spent_or_none(acc: RowCalls, row: int, stop: Stop) -> RowResult | None:
    """A row cut short by a stop: record what it already paid for, else leave it for resume."""
    if acc.calls == 0:
        return None
    reason = stop.reason
    return acc.result(row, status="error", error_code=reason.code if reason else "STOPPED",
                      error_message=reason.message if reason else "stopped")
