"""The retry policy: 429s wait in the limiter and have their own budget; other errors use attempts."""

from __future__ import annotations

import pytest

from pipeline.errors import InvalidParameters, RateLimited, ServerError, UpstreamSaturated
from pipeline.retry import busy_backoff, retry_policy


async def attempts_until_done(errors: list[Exception], **policy: float) -> tuple[int, Exception | None]:
    """Run a call that raises ``errors`` in turn, then succeeds; (attempts made, error it ended with)."""
    made = 0
    try:
        async for attempt in retry_policy(2, initial_wait=0.0, max_wait=0.0, **policy):
            with attempt:
                made += 1
                if made <= len(errors):
                    raise errors[made - 1]
    except Exception as exc:  # noqa: BLE001 - the test reports what the policy let through
        return made, exc
    return made, None


async def test_429s_do_not_use_up_attempts() -> None:
    many = [RateLimited("slow down") for _ in range(10)]
    made, error = await attempts_until_done(many)
    assert (made, error) == (11, None)  # two attempts allowed, ten 429s were not the row's fault


async def test_other_transient_errors_use_attempts_even_after_429s() -> None:
    errors: list[Exception] = [RateLimited("slow down"), RateLimited("slow down"), ServerError("x"), ServerError("y")]
    made, error = await attempts_until_done(errors)
    assert made == 4 and isinstance(error, ServerError)


async def test_429s_alone_give_up_after_their_patience() -> None:
    forever = [RateLimited("slow down") for _ in range(10_000)]
    made, error = await attempts_until_done(forever, rate_limited_for=0.05)
    assert isinstance(error, RateLimited) and 2 < made < 10_000


async def test_terminal_errors_are_not_retried() -> None:
    made, error = await attempts_until_done([InvalidParameters("bad")])
    assert made == 1 and isinstance(error, InvalidParameters)


@pytest.mark.parametrize(("retry_after", "waits"), [(None, 0.0), (0.02, 0.02)])
async def test_a_429_waits_only_what_the_server_asked(retry_after: float | None, waits: float) -> None:
    policy = retry_policy(3, initial_wait=5.0, max_wait=5.0)  # a 5 s backoff would show
    async for attempt in policy:
        with attempt:
            if attempt.retry_state.attempt_number == 1:
                raise RateLimited("slow down", retry_after=retry_after)
    assert policy.statistics["idle_for"] == pytest.approx(waits)


async def test_a_saturated_upstream_waits_its_own_short_backoff() -> None:
    """A relay's "上游负载已饱和" 429 waits the busy policy (full jitter under its first, doubling,
    capped by its longest), not an error's 5 s, and does not use up attempts."""
    policy = retry_policy(2, initial_wait=5.0, max_wait=5.0, busy_wait=(0.01, 0.03))
    made = 0
    async for attempt in policy:
        with attempt:
            made += 1
            if made <= 6:
                raise UpstreamSaturated("当前分组上游负载已饱和，请稍后再试")
    idle = policy.statistics["idle_for"]
    assert made == 7  # six refusals, two attempts allowed: busy is not a failure
    assert 0.0 <= idle <= 0.01 + 0.02 + 4 * 0.03  # under 0.01, 0.02, then 0.03 each: never the 5 s backoff


def test_the_busy_backoff_is_counted_in_the_jobs_time() -> None:
    assert busy_backoff(60.0) == (0.5, 8.0)  # a real minute: half a second, eight seconds
    assert busy_backoff(6.0) == pytest.approx((0.05, 0.8))  # a minute scaled to 6 s: scaled alike
