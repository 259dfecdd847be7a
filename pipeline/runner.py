"""Fan-out: reader → bounded stream → N workers (limiter, budget, call with retries) → journal.

Structured concurrency throughout: one task group owns the reader and the workers; a hard stop
(bad key, unknown agent, Ctrl-C) cancels that group; a soft stop (balance gone, budget cap)
stops the reader and lets calls in flight finish. Either way, everything journaled stays, and
the output is finalised with every row once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import polars as pl
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from tenacity import RetryCallState

from .budget import Budget
from .dataset import PROMPT, ROW
from .errors import (
    APIError,
    BudgetExceeded,
    InsufficientBalance,
    InvalidParameters,
    MomoError,
    RateLimited,
    TerminalError,
    TransientError,
)
from .limiter import RateLimiter
from .providers.base import CallResult, PromptRequest, Provider
from .result import RowResult
from .retry import retry_policy
from .sink import Journal, Unfinished


@dataclass
class RunStats:
    """Live counters: the progress bar reads them, the summary reports them."""

    total: int = 0
    already_done: int = 0
    ok: int = 0
    error: int = 0
    skipped: int = 0
    unparsed: int = 0  # label jobs: answers that never parsed (finished, not errors)
    tokens: int = 0
    cost: float = 0.0
    calls: int = 0
    retries: int = 0
    rate_limited: int = 0
    resent: int = 0
    unknown_cost_calls: int = 0
    started: float = field(default_factory=time.monotonic)
    first_call: float | None = None
    last_call: float | None = None

    @property
    def done(self) -> int:
        return self.already_done + self.ok + self.error + self.skipped + self.unparsed

    def record(self, result: RowResult) -> None:
        if result.status == "ok":
            self.ok += 1
        elif result.status == "skipped":
            self.skipped += 1
        elif result.status == "unparsed":
            self.unparsed += 1
        else:
            self.error += 1


@dataclass
class RowCalls:
    """What a row's calls added up to (a label row may make several)."""

    attempts: int = 0
    calls: int = 0
    tokens_used: int | None = 0
    cost: float | None = 0.0
    prompt_tokens: int | None = 0
    completion_tokens: int | None = 0
    latency_ms: float = 0.0
    last: CallResult | None = None

    def add(self, res: CallResult, latency_ms: float) -> None:
        self.calls += 1
        self.latency_ms += latency_ms
        self.last = res
        self.tokens_used = _plus(self.tokens_used, res.tokens_used)
        self.cost = _plus(self.cost, res.cost)
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
            **fields,
        )


def _plus(a: Any, b: Any) -> Any:
    return None if a is None or b is None else a + b


class Stop:
    """Why the job stops early, if it does."""

    def __init__(self) -> None:
        self.reason: Unfinished | None = None
        self.error: MomoError | None = None
        self.hard = False
        self.scope: anyio.CancelScope | None = None

    @property
    def stopped(self) -> bool:
        return self.reason is not None

    def soft(self, code: str, exc: MomoError) -> None:
        if self.reason is None:
            self.reason = Unfinished(code, f"not run: {exc} (job stopped; run again to resume)")
            self.error = exc

    def now(self, code: str, exc: MomoError) -> None:
        self.soft(code, exc)
        self.hard = True
        if self.scope is not None:
            self.scope.cancel()


class _NotSent(Exception):
    """The job stopped before this call was sent."""


WorstCost = Callable[[str], float]


class Caller:
    """One call as the tasks see it: budget, limiter, retries and accounting around the provider."""

    def __init__(
        self,
        provider: Provider,
        *,
        limiter: RateLimiter,
        budget: Budget,
        stats: RunStats,
        stop: Stop,
        max_attempts: int,
        request: PromptRequest,
        worst_cost: WorstCost | None = None,
        backoff: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self.provider = provider
        self.limiter = limiter
        self.budget = budget
        self.stats = stats
        self.stop = stop
        self.max_attempts = max_attempts
        self.request = request
        self.worst_cost = worst_cost
        self.backoff = backoff

    async def __call__(
        self, prompt: str, acc: RowCalls, *, temperature: float | None = None
    ) -> CallResult:
        request = PromptRequest(
            prompt=prompt,
            temperature=self.request.temperature if temperature is None else temperature,
            max_tokens=self.request.max_tokens,
            stream=self.request.stream,
        )
        policy = retry_policy(
            self.max_attempts,
            initial_wait=self.backoff[0],
            max_wait=self.backoff[1],
            rate_limited_for=self.limiter.patience,
            before_sleep=self._count_retry,
        )
        async for attempt in policy:
            with attempt:
                result = await self._attempt(request, acc)
        return result

    def _count_retry(self, state: RetryCallState) -> None:
        self.stats.retries += 1

    async def _attempt(self, request: PromptRequest, acc: RowCalls) -> CallResult:
        if self.stop.stopped:
            raise _NotSent
        worst = self.worst_cost(request.prompt) if self.worst_cost and self.budget.cap else 0.0
        held = await self.budget.reserve(worst)
        grant = 0
        try:
            grant = await self.limiter.acquire()
            if self.stop.stopped:
                raise _NotSent
            acc.attempts += 1
            self.stats.calls += 1
            now = time.monotonic()
            self.stats.first_call = self.stats.first_call or now
            self.stats.last_call = now
            result = await self.provider.complete(request)
        except RateLimited as exc:
            self.budget.release(held)
            self.stats.rate_limited += 1
            self.limiter.on_rate_limited(exc.retry_after, None, exc.remaining, exc.reset, grant=grant)
            raise
        except BaseException:
            self.budget.release(held)
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
        return result


class RowTask(Protocol):
    """What a job does with one prompt (one call, or votes and re-asks for labels)."""

    extra_schema: dict[str, pl.DataType]

    async def run(self, prompt: str, call: Caller, acc: RowCalls, row: int) -> RowResult: ...


class PromptTask:
    """The plain job: one call per row, the response kept as it came."""

    extra_schema: dict[str, pl.DataType] = {}

    async def run(self, prompt: str, call: Caller, acc: RowCalls, row: int) -> RowResult:
        res = await call(prompt, acc)
        return acc.result(row, status="ok", response=res.content)


Sink = Callable[[RowResult], None]
Batches = Callable[[], Iterator[pl.DataFrame]]


@dataclass
class Fanout:
    """Runs one job's rows through the workers. Build it, then ``await run()`` once."""

    task: RowTask
    caller: Caller
    journal: Journal
    batches: Batches
    finished: bytearray
    concurrency: int
    on_result: Callable[[RowResult], None] = lambda r: None
    only_rows: set[int] | None = None  # a pilot runs just these

    async def run(self) -> None:
        stop = self.caller.stop
        send, receive = anyio.create_memory_object_stream[tuple[int, str]](self.concurrency * 2)
        with anyio.CancelScope() as scope:
            stop.scope = scope
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read, send)
                for _ in range(self.concurrency):
                    tg.start_soon(self._work, receive.clone())
                receive.close()

    def _emit(self, result: RowResult) -> None:
        # workers write straight to the journal: one flushed write per result, no extra hop;
        # the event loop runs one task at a time, so writes never interleave
        self.journal.append([result])
        self.caller.stats.record(result)
        self.on_result(result)

    async def _read(self, send: ObjectSendStream[tuple[int, str]]) -> None:
        async with send:
            it = self.batches()
            while not self.caller.stop.stopped:
                batch = await anyio.to_thread.run_sync(next, it, None)
                if batch is None:
                    return
                for row, prompt in zip(batch[ROW].to_list(), batch[PROMPT].to_list(), strict=True):
                    if self.finished[row] or (self.only_rows is not None
                                              and row not in self.only_rows):
                        continue
                    if prompt is None or not prompt.strip():
                        self._emit(RowResult(row=row, status="skipped", error_code="EMPTY_PROMPT",
                                             error_message="prompt is null or empty: not sent"))
                        continue
                    if self.caller.stop.stopped:
                        return
                    await send.send((row, prompt))

    async def _work(self, receive: ObjectReceiveStream[tuple[int, str]]) -> None:
        async with receive:
            async for row, prompt in receive:
                if self.caller.stop.stopped:
                    continue  # drain: the reader is stopping too
                self.journal.mark_started([row])
                result = await self._one(row, prompt)
                if result is not None:
                    self._emit(result)

    async def _one(self, row: int, prompt: str) -> RowResult | None:
        acc = RowCalls()
        stop = self.caller.stop
        try:
            return await self.task.run(prompt, self.caller, acc, row)
        except _NotSent:
            return _spent_or_none(acc, row, stop)
        except InvalidParameters as exc:
            return acc.result(row, status="error", error_code=exc.code, error_message=str(exc))
        except TransientError as exc:
            return acc.result(row, status="error", error_code=exc.code, error_message=str(exc))
        except InsufficientBalance as exc:
            stop.soft("INSUFFICIENT_BALANCE", exc)
            return _spent_or_none(acc, row, stop)
        except BudgetExceeded as exc:
            stop.soft("BUDGET_EXCEEDED", exc)
            return _spent_or_none(acc, row, stop)
        except TerminalError as exc:
            stop.now(exc.code or "STOPPED", exc)
            return None
        except APIError as exc:  # an unclassified 4xx: this row fails, the job goes on
            return acc.result(row, status="error", error_code=exc.code or f"HTTP_{exc.status}",
                              error_message=str(exc))


def _spent_or_none(acc: RowCalls, row: int, stop: Stop) -> RowResult | None:
    """A row cut short by a stop: journal what it already paid for, else leave it for resume."""
    if acc.calls == 0:
        return None
    reason = stop.reason
    return acc.result(row, status="error", error_code=reason.code if reason else "STOPPED",
                      error_message=reason.message if reason else "stopped")
