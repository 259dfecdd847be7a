"""The runner on its own: ``Caller`` and ``Fanout`` over a scripted provider, on a virtual clock.

Each test drives real parts (the ledger in a temporary folder, the budget, the rate limiter)
with a fake :class:`~pipeline.providers.base.Provider`; only time and the service are fake. What
is checked is what the provider was asked (the fake's own count, not the runner's) and what the
ledger holds afterwards.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import (
    ConnectionLost,
    InsufficientBalance,
    Interrupted,
    InvalidApiKey,
    InvalidParameters,
    MomoError,
    RateLimited,
    RequestRejected,
    ServerError,
)
from pipeline.ledger import FINAL, RETRY, SENT, Cache
from pipeline.result import RowResult

from .fakes import KEYER, FakeProvider, answer, prompts, rig
from .helpers import max_in_any_window


def _by_row(results: list[RowResult]) -> dict[int, RowResult]:
    rows = [r.row for r in results]
    assert len(rows) == len(set(rows)), f"a row was reported twice: {sorted(rows)}"
    return {r.row: r for r in results}


# -- every row ends with a result or a recorded error --------------------------------------------
async def test_every_row_ends_with_a_result_or_a_recorded_error(tmp_path: Path) -> None:
    def script(prompt: str, n: int) -> object:
        return {"question 3": InvalidParameters("prompt too long", status=400),
                "question 5": ServerError("upstream down", status=500),
                "question 6": RequestRejected("conflict", status=409)}.get(prompt, answer(prompt))

    provider = FakeProvider(script)
    r = rig(tmp_path, provider)
    with r.ledger:
        by_row = _by_row(await r.run(prompts(12, blank=[7]), max_attempts=3))
        assert sorted(by_row) == list(range(12))
        assert {row: res.status for row, res in by_row.items() if res.status != "ok"} == {
            3: "error", 5: "error", 6: "error", 7: "skipped"}
        assert (by_row[3].error_code, by_row[5].error_code, by_row[6].error_code, by_row[7].error_code) == (
            "INVALID_PARAMETERS", "SERVER_ERROR", "HTTP_409", "EMPTY_PROMPT")
        assert by_row[0].response == "answer to question 0" and by_row[0].cost == 0.001
        # the transient error was tried max_attempts times, the others once
        assert provider.prompts["question 5"] == 3 and by_row[5].attempts == 3
        assert provider.prompts["question 3"] == provider.prompts["question 6"] == 1
        # and every sent row's outcome is in the ledger: final, or to be tried again on resume
        for i in set(range(12)) - {7}:
            entry = r.ledger.get(KEYER.row(f"question {i}"))
            assert entry is not None and entry.record is not None
            assert entry.record["status"] == by_row[i].status
            assert entry.state == (RETRY if i in (5, 6) else FINAL)
    assert r.stats.done == 12 and r.stats.ok == 8 and r.stats.error == 3 and r.stats.skipped == 1
    assert r.stop.reason is None


# -- retries -----------------------------------------------------------------------------------------
async def test_a_transient_error_is_retried_with_backoff_in_virtual_time(tmp_path: Path) -> None:
    def script(prompt: str, n: int) -> object:
        if prompt == "question 0" and n < 2:
            return ServerError("blip", status=503) if n == 0 else ConnectionLost("reset")
        return answer(prompt)

    provider = FakeProvider(script)
    r = rig(tmp_path, provider)
    start = r.clock.now()
    with r.ledger:
        by_row = _by_row(await r.run(prompts(3), max_attempts=3))
    assert by_row[0].status == "ok" and by_row[0].attempts == 3 and provider.prompts["question 0"] == 3
    assert r.stats.retries == 2 and r.stats.calls == 5
    assert r.stats.unknown_outcomes == 1  # the reset: sent, no answer, may have been charged
    # two backoff waits, exponential with jitter from 0.5 s, and they passed in virtual time only
    assert len(r.stop.waits) == 2 and all(0.5 <= w <= 30.0 for w in r.stop.waits)
    assert r.clock.now() - start == pytest.approx(sum(r.stop.waits))


async def test_429s_wait_retry_after_and_do_not_use_up_attempts(tmp_path: Path) -> None:
    def script(prompt: str, n: int) -> object:
        if prompt == "question 1" and n < 4:
            return RateLimited("slow down", status=429, retry_after=7.0)
        return answer(prompt)

    provider = FakeProvider(script)
    r = rig(tmp_path, provider)
    with r.ledger:
        by_row = _by_row(await r.run(prompts(2), max_attempts=2))
    assert by_row[1].status == "ok" and provider.prompts["question 1"] == 5  # 4 refusals, with 2 attempts
    assert r.stop.waits == [7.0] * 4  # Retry-After, exactly
    assert r.stats.rate_limited == 4 and r.limiter.rate_limited == 4


async def test_retries_stop_at_max_attempts_and_the_row_is_tried_again_on_resume(tmp_path: Path) -> None:
    provider = FakeProvider(lambda p, n: ServerError("down", status=502) if n < 4 else answer(p))
    r = rig(tmp_path, provider)
    with r.ledger:
        first = _by_row(await r.run(["only"], max_attempts=4))
    assert first[0].status == "error" and first[0].attempts == 4 and provider.prompts["only"] == 4
    again = rig(tmp_path, provider)
    with again.ledger:
        second = _by_row(await again.run(["only"], max_attempts=4))
        assert again.ledger.get(KEYER.row("only")).state == FINAL  # type: ignore[union-attr]
    assert second[0].status == "ok" and provider.prompts["only"] == 5


async def test_the_limiter_paces_the_calls_in_virtual_time(tmp_path: Path) -> None:
    """60 a minute, 8 workers: the calls go out a limiter interval apart on the virtual clock, and
    no 60 s window holds more than 60 of them (the run takes no real minute)."""
    provider = FakeProvider()
    r = rig(tmp_path, provider, rate=60, window=60.0)
    with r.ledger:
        await r.run(prompts(130), concurrency=8, rows_per_batch=32)
    times = provider.times
    assert len(times) == 130 and times == sorted(times)
    assert max_in_any_window(times, 60.0) <= 60
    assert (times[-1] - times[0]) / 129 == pytest.approx(60 / 60 * 1.015, rel=0.01)  # near the rate, not below


# -- terminal errors stop the job --------------------------------------------------------------------
async def test_a_bad_key_stops_at_once_and_nothing_after_it_is_sent(tmp_path: Path) -> None:
    provider = FakeProvider(lambda p, n: InvalidApiKey("bad key", status=401) if p == "question 2" else answer(p))
    r = rig(tmp_path, provider)
    with r.ledger:
        by_row = _by_row(await r.run(prompts(10), concurrency=1))
        assert set(by_row) == {0, 1}
        assert r.outcome("question 2") is None and r.outcome("question 3") is None  # left for a resume
    assert r.stop.hard and r.stop.reason is not None and r.stop.reason.code == "INVALID_API_KEY"
    assert [c.prompt for c in provider.calls] == ["question 0", "question 1", "question 2"]


async def test_a_soft_stop_lets_calls_in_flight_finish_and_sends_nothing_new(tmp_path: Path) -> None:
    gate = anyio.Event()
    provider = FakeProvider(
        lambda p, n: InsufficientBalance("no money", status=402) if p == "question 0" else answer(p), gate=gate)
    r = rig(tmp_path, provider)
    with r.ledger:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: r.run(prompts(20), concurrency=4))
            await provider.wait_in_flight(4)  # all four workers have a call out (each waits on the gate)
            gate.set()
        by_row = _by_row(r.results)
        assert set(by_row) == {1, 2, 3} and {res.status for res in by_row.values()} == {"ok"}
        assert all(r.outcome(f"question {i}") is not None for i in (1, 2, 3))
    assert not r.stop.hard and r.stop.reason is not None and r.stop.reason.code == "INSUFFICIENT_BALANCE"
    assert len(provider.calls) == 4


# -- duplicates pay once -----------------------------------------------------------------------------
async def test_a_repeated_prompt_is_sent_once_across_batches_and_in_flight(tmp_path: Path) -> None:
    gate = anyio.Event()
    provider = FakeProvider(gate=gate)
    asked = ["a", "b", "a", "c", "a", "b", "a", "c", "d"]
    r = rig(tmp_path, provider)
    with r.ledger:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: r.run(asked, concurrency=4, rows_per_batch=2))
            await provider.wait_in_flight(4)  # a, b, c, d out at once: the repeats came while "a" was in flight
            gate.set()
    assert provider.prompts == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert r.stats.duplicates == 5 and sorted(res.row for res in r.results) == [0, 1, 3, 8]


async def test_a_rerun_pays_for_nothing_already_answered(tmp_path: Path) -> None:
    provider = FakeProvider()
    one = rig(tmp_path, provider)
    with one.ledger:
        await one.run(prompts(6))
    two = rig(tmp_path, provider)
    with two.ledger:
        await two.run(prompts(6) + ["question 9"])
    assert provider.prompts == {f"question {i}": 1 for i in (*range(6), 9)}
    assert two.stats.already_done == 6 and [res.row for res in two.results] == [6]


async def test_with_dedup_off_each_repeat_is_its_own_paid_request(tmp_path: Path) -> None:
    provider = FakeProvider()
    r = rig(tmp_path, provider)
    with r.ledger:
        await r.run(["a", "b", "a", "a"], dedup=False)
    assert provider.prompts == {"a": 3, "b": 1} and r.stats.duplicates == 0 and len(r.results) == 4


async def test_an_answer_in_the_shared_cache_is_not_paid_for_again_by_another_job(tmp_path: Path) -> None:
    provider = FakeProvider(lambda p, n: answer(p, cost=0.003))
    cache = Cache(tmp_path / "cache")
    try:
        first = rig(tmp_path / "job-a", provider)
        first.cache = cache
        with first.ledger:
            await first.run(prompts(5))
        other = rig(tmp_path / "job-b", provider)  # another job: its own ledger, the same cache
        other.cache = cache
        with other.ledger:
            by_row = _by_row(await other.run(prompts(7)))
    finally:
        cache.close()
    assert set(provider.prompts.values()) == {1} and len(provider.prompts) == 7
    assert [by_row[i].cached for i in range(7)] == [True] * 5 + [False] * 2
    assert [by_row[i].cost for i in range(7)] == [0.0] * 5 + [0.003] * 2  # cached: no cost to this job
    assert other.stats.cached == 5 and other.stats.cache_saved == pytest.approx(5 * 0.003)


# -- the cap -----------------------------------------------------------------------------------------
@settings(max_examples=25)
@given(costs=st.lists(st.sampled_from([0.0, 0.002, 0.005, 0.01]), min_size=1, max_size=30),
       lost=st.sets(st.integers(0, 29), max_size=5),
       cap=st.sampled_from([0.0, 0.01, 0.03, 0.1]), concurrency=st.integers(1, 8))
def test_the_cap_is_never_exceeded_even_by_calls_whose_outcome_is_unknown(
        costs: list[float], lost: set[int], cap: float, concurrency: int) -> None:
    """Every call's worst case is 0.01; a lost call (reset after the server charged it) is billed
    at its worst. Whatever the order, what the fake server billed stays within the cap."""
    worst = 0.01
    asked = [f"q{i}" for i in range(len(costs))]

    def script(prompt: str, n: int) -> object:
        i = int(prompt[1:])
        return ConnectionLost("reset after the charge") if i in lost and n == 0 else answer(prompt, costs[i])

    async def main(tmp: Path) -> None:
        provider = FakeProvider(script, charge_before_raise=worst)
        r = rig(tmp, provider, cap=cap)
        with r.ledger:
            await r.run(asked, concurrency=concurrency, worst_cost=lambda prompt: worst)
            assert sum(provider.charged) <= cap + 1e-12
            unfinished = [p for p in asked if r.outcome(p) is None]
        if unfinished:  # a row left without an outcome: only because the cap stopped the job
            assert r.stop.reason is not None and r.stop.reason.code == "BUDGET_EXCEEDED"
        else:
            assert sum(provider.charged) + worst > cap - 1e-12 or r.stop.reason is None

    with tempfile.TemporaryDirectory() as tmp:
        anyio.run(main, Path(tmp))


async def test_a_cap_stops_the_job_softly_and_a_raised_cap_resumes(tmp_path: Path) -> None:
    provider = FakeProvider(lambda p, n: answer(p, cost=0.004))
    r = rig(tmp_path, provider, cap=0.02)
    with r.ledger:
        await r.run(prompts(10), worst_cost=lambda p: 0.01, concurrency=3)
        spent = r.ledger.totals().spent
    assert r.stop.reason is not None and r.stop.reason.code == "BUDGET_EXCEEDED" and not r.stop.hard
    assert sum(provider.charged) <= 0.02 and spent == pytest.approx(sum(provider.charged))
    more = rig(tmp_path, provider, cap=1.0, spent=spent)
    with more.ledger:
        await more.run(prompts(10), worst_cost=lambda p: 0.01)
        assert all(more.outcome(f"question {i}") is not None for i in range(10))
    assert set(provider.prompts.values()) == {1}  # nothing paid twice


# -- cancellation ------------------------------------------------------------------------------------
async def test_an_interrupt_sends_nothing_more_and_records_every_call_it_made(tmp_path: Path) -> None:
    provider = FakeProvider()
    r = rig(tmp_path, provider)
    at_stop: list[int] = []

    def interrupt_after_three(result: RowResult) -> None:
        if len(r.results) == 3 and not at_stop:
            at_stop.append(len(provider.calls))
            r.stop.soft(Interrupted("interrupted"))

    with r.ledger:
        # one batch: the reader has queued rows beyond those in flight when the stop comes
        await r.run(prompts(40), concurrency=4, rows_per_batch=40, on_result=interrupt_after_three)
        assert len(provider.calls) == at_stop[0] < 40  # not one call started after the stop
        assert all(r.outcome(c.prompt) is not None for c in provider.calls)  # each call's answer kept
    assert r.stop.reason is not None and r.stop.reason.code == "INTERRUPTED"


async def test_a_hard_stop_cancels_calls_in_flight_and_leaves_them_marked_sent(tmp_path: Path) -> None:
    provider = FakeProvider(gate=anyio.Event())  # the gate never opens: calls hang until cancelled
    r = rig(tmp_path, provider)
    with r.ledger:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: r.run(prompts(10), concurrency=3))
            await provider.wait_in_flight(3)
            r.stop.now(InvalidApiKey("revoked"))
        assert r.results == [] and len(provider.calls) == 3
        # each cancelled call may have been charged: it stays "sent", so a resume knows to count it
        for call in provider.calls:
            entry = r.ledger.get(KEYER.row(call.prompt))
            assert entry is not None and entry.state == SENT


async def test_a_resume_sends_again_what_a_killed_run_had_in_flight_and_counts_it(tmp_path: Path) -> None:
    hung = FakeProvider(gate=anyio.Event())
    killed = rig(tmp_path, hung)
    with killed.ledger:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: killed.run(prompts(10), concurrency=3))
            await hung.wait_in_flight(3)
            killed.stop.now(Interrupted("killed"))
    provider = FakeProvider()
    again = rig(tmp_path, provider)
    with again.ledger:
        by_row = _by_row(await again.run(prompts(10)))
        assert all(again.outcome(f"question {i}") is not None for i in range(10))
    assert sorted(by_row) == list(range(10)) and again.stats.resent == 3
    assert set(provider.prompts) == {f"question {i}" for i in range(10)} and set(provider.prompts.values()) == {1}


async def test_a_stop_between_retries_ends_them_and_leaves_the_row_for_resume(tmp_path: Path) -> None:
    r = rig(tmp_path, FakeProvider())

    def script(prompt: str, n: int) -> object:
        if n == 1:
            r.stop.soft(Interrupted("interrupted"))  # the stop comes during the second try
        return ServerError("down", status=500)

    r.provider.script = script
    with r.ledger:
        await r.run(["only"], max_attempts=6)
        assert r.outcome("only") is None
    assert r.provider.prompts["only"] == 2 and r.results == []


# -- properties over arbitrary scripts ---------------------------------------------------------------
FAILURES: dict[str, Callable[[], MomoError]] = {
    "5xx": lambda: ServerError("down", status=503),
    "reset": lambda: ConnectionLost("reset"),
    "429": lambda: RateLimited("slow down", status=429, retry_after=2.0),
    "400": lambda: InvalidParameters("bad", status=400),
    "409": lambda: RequestRejected("conflict", status=409),
}
MAX_ATTEMPTS = 3


def _expected(steps: list[str]) -> tuple[str, int]:
    """What the policy makes of a prompt's answers, call by call: the row's status and its calls.
    (Written out here from the contract of retry.py, not computed by it.)"""
    failures = 0
    for calls, step in enumerate([*steps, "ok"], start=1):
        if step == "ok":
            return "ok", calls
        if step in ("400", "409"):
            return "error", calls
        failures += step != "429"  # a 429 does not use up an attempt
        if failures == MAX_ATTEMPTS:
            return "error", calls
    raise AssertionError("unreachable")


@settings(max_examples=60)
@given(scripts=st.lists(st.lists(st.sampled_from(["429", "429", "5xx", "reset", "400", "409"]), max_size=5),
                        min_size=1, max_size=8),
       picks=st.lists(st.integers(0, 9), min_size=1, max_size=24), concurrency=st.integers(1, 6))
def test_whatever_the_service_answers_every_row_ends_once_and_no_answer_is_paid_twice(
        scripts: list[list[str]], picks: list[int], concurrency: int) -> None:
    """Rows pick prompts (so some repeat, and a pick past the scripts is an empty prompt); each
    prompt's calls fail as its script says, then succeed."""
    asked: list[str | None] = [f"p{i}" if i < len(scripts) else None for i in picks]

    def script(prompt: str, n: int) -> object:
        steps = scripts[int(prompt[1:])]
        return FAILURES[steps[n]]() if n < len(steps) else answer(prompt)

    async def main(tmp: Path) -> None:
        provider = FakeProvider(script)
        r = rig(tmp, provider)
        with r.ledger:
            await r.run(asked, concurrency=concurrency, max_attempts=MAX_ATTEMPTS, rows_per_batch=5)
            by_row = _by_row(r.results)
            firsts = {asked.index(p) for p in asked}  # the first row asking each prompt, or the first blank
            assert set(by_row) == firsts | {i for i, p in enumerate(asked) if p is None}
            for row, result in by_row.items():
                prompt = asked[row]
                if prompt is None:
                    assert result.status == "skipped"
                    continue
                status, calls = _expected(scripts[int(prompt[1:])])
                assert (result.status, provider.prompts[prompt]) == (status, calls), (prompt, result)
                entry = r.ledger.get(KEYER.row(prompt))
                assert entry is not None and entry.record is not None and entry.record["status"] == status
        assert r.stop.reason is None
        assert set(provider.answered.values()) <= {1}  # no prompt answered (and paid) twice

    with tempfile.TemporaryDirectory() as tmp:
        anyio.run(main, Path(tmp))
