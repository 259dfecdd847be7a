"""The limiter against a virtual clock: exact, fast, no real sleeping.

The window-learning and rate-finding tests drive the limiter against the sandbox's own window
algorithms (one request at a time, answered at once), so every figure is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
import pytest

from pipeline.limiter import RateLimiter
from pipeline.sandbox.ratelimit import Limiter, make_limiter

from .fakes import VirtualClock
from .helpers import max_in_any_window

ALGORITHMS = ["fixed_window", "sliding_log", "token_bucket"]


@dataclass
class Driven:
    """What a driven run sent: (time, admitted) per request, in order."""

    sent: list[tuple[float, bool]] = field(default_factory=list)

    @property
    def refused(self) -> int:
        return sum(not ok for _, ok in self.sent)

    @property
    def admitted_times(self) -> list[float]:
        return [t for t, ok in self.sent if ok]


async def drive(lim: RateLimiter, server: Limiter, clock: VirtualClock, rows: int, *,
                headers: bool = True) -> Driven:
    """Send ``rows`` requests one at a time through ``lim`` to ``server``, retrying each 429."""
    out = Driven()
    for _ in range(rows):
        while True:
            grant = await lim.acquire()
            d = server.acquire(clock.now())
            out.sent.append((clock.now(), d.allowed))
            if d.allowed and headers:
                lim.on_success(d.limit, d.remaining, d.reset, grant=grant)
            elif d.allowed:
                lim.on_success(grant=grant)
            elif headers:  # the sandbox's 429: Retry-After and Reset are the same
                lim.on_rate_limited(d.reset, None, d.remaining, d.reset, grant=grant)
            else:
                lim.on_rate_limited(grant=grant)
            if d.allowed:
                break
    return out


async def grant_times(lim: RateLimiter, clock: VirtualClock, n: int) -> list[float]:
    out = []
    for _ in range(n):
        await lim.acquire()
        out.append(clock.now())
    return out


@pytest.mark.parametrize("limit", [10, 60, 300])
async def test_never_more_than_limit_in_any_window_and_close_to_rate(limit: int) -> None:
    clock = VirtualClock()
    lim = RateLimiter(limit, 60.0, clock=clock)
    times = await grant_times(lim, clock, limit * 3)
    # closed windows: even requests exactly 60 s apart count together
    assert max_in_any_window(times, 60.0 + 1e-9) <= limit
    achieved = (len(times) - 1) / (times[-1] - times[0]) * 60.0
    assert achieved >= 0.97 * limit


async def test_first_minute_is_not_a_burst_of_a_whole_minute() -> None:
    clock = VirtualClock()
    lim = RateLimiter(300, 60.0, clock=clock)
    times = await grant_times(lim, clock, 20)
    # evenly paced from the start (GCRA lets one grant come up to tau early, never a burst)
    assert times[-1] - times[0] >= 18 * 60.0 / 300


async def test_lateness_is_caught_up_without_breaking_the_window() -> None:
    clock = VirtualClock()
    lim = RateLimiter(60, 60.0, clock=clock)
    times = []
    for i in range(180):
        await lim.acquire()
        times.append(clock.now())
        clock.t += 0.3 if i % 3 == 0 else 0.0  # the scheduler wakes us late now and then
    assert max_in_any_window(times, 60.0 + 1e-9) <= 60
    assert (len(times) - 1) / (times[-1] - times[0]) * 60.0 >= 0.97 * 60


async def test_rate_limited_slows_down_pauses_and_recovers_gradually() -> None:
    clock = VirtualClock()
    lim = RateLimiter(60, 60.0, clock=clock)
    await lim.acquire()
    lim.on_rate_limited(retry_after=5.0)
    assert lim.rate is not None and lim.rate < 60
    before = clock.now()
    await lim.acquire()
    assert clock.now() - before >= 5.0  # Retry-After honoured
    rates = []
    for _ in range(30):
        lim.on_success()
        rates.append(lim.rate)
    # additive recovery, quick: the server said when, so the pace it came at was likely right
    assert rates == sorted(rates) and rates[0] < 60 and rates[-1] == 60


async def test_a_header_less_429_recovers_slowly_probing_upwards() -> None:
    clock = VirtualClock()
    lim = RateLimiter(60, 60.0, clock=clock)
    lim.on_rate_limited(grant=await lim.acquire())  # nobody says when, nor how fast
    lim.on_success(grant=await lim.acquire())  # the probe: the episode closes
    rates = []
    for _ in range(100):
        lim.on_success()
        rates.append(lim.rate)
    assert rates == sorted(rates) and rates[0] < 60 and rates[-1] == 60
    assert len(set(rates)) > 30  # about a window's worth of successes, not a jump


async def test_a_limit_header_alone_never_lowers_the_pace() -> None:
    clock = VirtualClock()
    lim = RateLimiter(600, 60.0, clock=clock)
    await lim.acquire()
    lim.on_success(limit=100, remaining=99)  # 100 per what? nothing says
    assert lim.target == 600 and lim.rate == 600


async def test_headers_pause_when_nothing_remains() -> None:
    clock = VirtualClock()
    lim = RateLimiter(60, 60.0, clock=clock)
    lim.on_success(limit=60, remaining=10, reset=1.0)  # 60 per (at least) 1 s: no slower than the job
    assert lim.target == 60
    await lim.acquire()
    start = clock.now()
    clock.t += 0.8  # the answer came back 0.8 s later: nothing remains, a slot frees in 0.4 s
    lim.on_success(limit=60, remaining=0, reset=0.4)
    await lim.acquire()
    assert clock.now() - start == pytest.approx(1.2)  # not at the paced 1.015 s: the server said wait


async def test_a_full_window_reset_is_not_waited_for_whole() -> None:
    clock = VirtualClock()
    lim = RateLimiter(60, 60.0, clock=clock)
    await lim.acquire()
    lim.on_success(remaining=0, reset=59.0)  # sliding log: the whole window refills in 59 s
    before = clock.now()
    await lim.acquire()
    assert clock.now() - before <= 60 / 60 * 1.015 + 1e-9  # one interval, not 59 s


async def test_unlimited_never_waits() -> None:
    clock = VirtualClock()
    lim = RateLimiter(None, clock=clock)
    await grant_times(lim, clock, 1000)
    assert clock.now() == 1000.0 and lim.unlimited


async def test_a_grant_without_waiting_only_when_nothing_paces() -> None:
    """``grant_now`` lets a call skip the wait (and the cancel scope a stop needs around it) only
    when ``acquire`` would not wait: no rate, no pause, no probe."""
    clock = VirtualClock()
    free = RateLimiter(None, clock=clock)
    assert free.grant_now() == 1 and free.grant_now() == 2 and free.granted == 2
    paced = RateLimiter(60, 60.0, clock=clock)
    assert paced.grant_now() is None and paced.granted == 0  # acquire waits its turn
    free.on_rate_limited(retry_after=5.0, grant=2)  # a pause
    assert free.grant_now() is None
    clock.t += 5.0
    assert free.grant_now() == 3
    free.on_rate_limited(grant=3)  # header-less: probing, one at a time
    assert free.grant_now() is None


async def test_concurrent_waiters_share_one_schedule() -> None:
    clock = VirtualClock()  # one sleeper at a time: the limiter's lock holds the others
    lim = RateLimiter(10, 1.0, clock=clock)
    times: list[float] = []

    async def worker() -> None:
        for _ in range(10):
            await lim.acquire()
            times.append(clock.now())

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(worker)
    assert len(times) == 80 and max_in_any_window(times, 1.0 + 1e-9) <= 10  # eight windows' worth
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert gaps == pytest.approx([1.0 / 10 * 1.015] * 79)  # one grant per interval, never two at once


async def test_a_slowdown_does_not_let_the_next_grant_catch_up_past_the_limit() -> None:
    """Paced at the tier, then a 429 slows the pace: the longer interval must not bring a longer
    catch-up that lets the next grant come early, into a window already full."""
    clock = VirtualClock()
    lim = RateLimiter(10, 1.0, clock=clock)
    times = []
    for i in range(40):
        grant = await lim.acquire()
        times.append(clock.now())
        if i == 9:
            lim.on_rate_limited(retry_after=0.001, grant=grant)  # a blip: the pace drops to 0.8x
        else:
            lim.on_success(grant=grant)
    assert max_in_any_window(times, 1.0 + 1e-9) <= 10


# -- learning the server's window (issue 10, part 1) ---------------------------------------------
@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_a_shorter_server_window_is_learned_and_the_told_rate_kept(algorithm: str) -> None:
    """Told 600/min; the server allows 100 per 10 s (the same average) and says so in headers."""
    clock = VirtualClock()
    lim = RateLimiter(600, 60.0, clock=clock)
    driven = await drive(lim, make_limiter(algorithm, 100, 10.0), clock, 400)  # type: ignore[arg-type]
    assert driven.refused == 0
    assert lim.target == pytest.approx(600) and lim.rate == pytest.approx(600)  # never slowed to 100/min
    assert max_in_any_window([t for t, _ in driven.sent], 10.0) <= 100
    ideal = 400 / 10.0
    assert driven.sent[-1][0] - driven.sent[0][0] <= 1.05 * ideal  # virtual time: exact, not machine speed
    if algorithm != "token_bucket":  # a bucket's Reset is its next token: its window shows only if it paces
        assert 9.9 <= lim.server.window <= 10.1


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_log"])
async def test_a_stricter_server_window_lowers_the_pace_to_its_limit(algorithm: str) -> None:
    """Told 600/min; the server allows only 50 per 10 s (300/min): the learned window says so."""
    clock = VirtualClock()
    lim = RateLimiter(600, 60.0, clock=clock)
    driven = await drive(lim, make_limiter(algorithm, 50, 10.0), clock, 200)  # type: ignore[arg-type]
    assert driven.refused == 0
    assert lim.target == pytest.approx(300, rel=0.02)  # 50 per 10 s, in the job's per-minute terms
    assert max_in_any_window([t for t, _ in driven.sent], 10.0) <= 50


async def test_the_window_is_learned_from_how_remaining_refills_without_reset() -> None:
    clock = VirtualClock()
    lim = RateLimiter(600, 60.0, clock=clock)
    server = make_limiter("sliding_log", 50, 10.0)
    assert server is not None
    refused = 0
    for _ in range(200):
        grant = await lim.acquire()
        d = server.acquire(clock.now())
        if d.allowed:
            lim.on_success(d.limit, d.remaining, grant=grant)  # no Reset header at all
        else:
            refused += 1
            lim.on_rate_limited(grant=grant)  # nor Retry-After
    # the server counted 50 in its window: our 50 latest grants fit in it. At the told 10/s they
    # span 4.9 s; once the 429 slows us down they span more, up to (never past) the true 10 s
    assert 7.0 <= lim.server.window <= 10.1
    assert lim.target is not None and lim.target <= 1.5 * 300
    assert refused <= 5


async def test_grants_in_flight_when_the_limit_is_first_seen_are_not_read_as_logged() -> None:
    """Answers come back out of order: grants made before the first ``Limit`` header were never
    timed, so a later answer must not measure a span from them."""
    clock = VirtualClock()
    lim = RateLimiter(300, 60.0, clock=clock)
    grants = []
    for _ in range(5):  # five in flight
        grants.append(await lim.acquire())
    lim.on_success(limit=300, remaining=299, reset=1.0, grant=grants[0])  # the first answer
    later = await lim.acquire()
    lim.on_success(limit=300, remaining=298, reset=1.0, grant=later)  # counted: this one and the one before
    assert lim.server.window == pytest.approx(1.0)
    assert lim.target == 300


# -- finding the rate when none is given (issue 10, part 2) --------------------------------------
@pytest.mark.parametrize("rows", [150, 600])  # 150: the case, where the first minute weighs most
@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_header_less_429s_find_the_rate_from_an_unlimited_start(algorithm: str, rows: int) -> None:
    """Enterprise (no rate) against a 60/min server whose 429s carry no header at all.

    A token bucket after its burst lets about one request through per probe: each episode the
    limiter closed with a rate only 0.8 times the last, refused again at once, 22 times on the way
    down for 150 rows (12.8 %); the probe's own pace is now taken as the rate (5, 3.2 %)."""
    clock = VirtualClock()
    lim = RateLimiter(None, 60.0, clock=clock)
    driven = await drive(lim, make_limiter(algorithm, 60, 60.0), clock, rows,  # type: ignore[arg-type]
                         headers=False)
    assert driven.refused <= 0.10 * len(driven.sent)
    wall = driven.sent[-1][0] - driven.sent[0][0]
    assert wall <= 1.3 * rows  # ideal: 600 rows at 1/s
    assert lim.finder.rate is not None and 0.6 <= lim.finder.rate <= 1.5  # settled near 1/s


async def test_429s_for_requests_sent_before_a_slowdown_do_not_cut_again() -> None:
    clock = VirtualClock()
    lim = RateLimiter(60, 60.0, clock=clock)
    grants = [await lim.acquire() for _ in range(5)]
    lim.on_rate_limited(grant=grants[0])
    after_first = lim.rate
    for grant in grants[1:]:  # in flight when the first 429 came back
        lim.on_rate_limited(grant=grant)
    assert lim.rate == after_first == pytest.approx(48)  # one decrease for the episode


async def test_without_retry_after_probes_go_one_at_a_time_and_back_off() -> None:
    clock = VirtualClock()
    lim = RateLimiter(None, 60.0, clock=clock)  # probes start at 1 s ("a second" of the minute)
    first = await lim.acquire()
    lim.on_success(grant=first)
    lim.on_rate_limited(grant=await lim.acquire())
    probes = []
    for _ in range(4):
        grant = await lim.acquire()
        probes.append(clock.now())
        lim.on_rate_limited(grant=grant)  # still full
    gaps = [b - a for a, b in zip(probes, probes[1:], strict=False)]
    assert gaps == pytest.approx([2.0, 4.0, 8.0])  # doubling
    grant = await lim.acquire()
    lim.on_success(grant=grant)  # a probe got through: paced from here, no longer probing
    assert not lim.finder.blocked and lim.rate is not None


async def test_a_successful_probe_wakes_the_request_waiting_for_the_next_one() -> None:
    lim = RateLimiter(None, 60.0)  # real clock: probes 1 s apart
    lim.on_success(grant=await lim.acquire())
    lim.on_rate_limited(grant=await lim.acquire())
    start = anyio.current_time()
    probe = await lim.acquire()  # about 1 s from now
    granted_at: list[float] = []

    async def next_request() -> None:
        await lim.acquire()  # would wait for the next probe, 1 s after this one
        granted_at.append(anyio.current_time() - start)

    async with anyio.create_task_group() as tg:
        tg.start_soon(next_request)
        await anyio.sleep(0.05)
        lim.on_success(grant=probe)
    assert granted_at and granted_at[0] < 1.8  # woken by the probe's success, not at ~2 s


# -- what a relay says in words, and a lone 429 ---------------------------------------------------
async def test_a_stated_limit_is_a_sliding_log_sent_in_bursts_as_it_frees() -> None:
    """new-api's "1分钟内最多请求60次" on the 61st call of an unpaced burst: the limiter waits until
    the first of the 60 leaves the window, then sends as the server's log frees, without probing:
    never more than 60 in any window (its safety margin kept), and no slower."""
    clock = VirtualClock()
    lim = RateLimiter(None, 60.0, clock=clock)
    start = clock.now()
    for _ in range(60):
        lim.on_success(grant=await lim.acquire())
        clock.t += 0.01
    refused = await lim.acquire()
    lim.on_rate_limited(grant=refused, stated=(60, 1.0, False))
    assert not lim.finder.in_episode and lim.learned()["stated_per_minute"] == 60  # given, not found
    times = []
    for _ in range(150):
        lim.on_success(grant=await lim.acquire())
        times.append(clock.now())
    assert times[0] >= start + 60.0  # the first of the 60 has left the server's window
    assert max_in_any_window(times, 60.0 * 1.015) <= 60
    assert times[-1] - times[0] <= 2 * 60.0 * 1.015 + 1.0  # 150 in three bursts, two windows apart


async def test_every_stated_limit_holds_at_once() -> None:
    """The success counter's 10 per minute and the total counter's 15 per two: neither is exceeded."""
    clock = VirtualClock()
    lim = RateLimiter(None, 60.0, clock=clock)
    lim.on_rate_limited(grant=await lim.acquire(), stated=(10, 1.0, False))
    lim.on_rate_limited(grant=await lim.acquire(), stated=(15, 2.0, True))
    assert lim.learned()["stated_per_minute"] == 7.5  # the slower on average
    times = []
    for _ in range(60):
        lim.on_success(grant=await lim.acquire())
        times.append(clock.now())
    assert max_in_any_window(times, 60.0 * 1.015) <= 10 and max_in_any_window(times, 120.0 * 1.015) <= 15


async def test_a_lone_429_while_answers_show_room_keeps_the_pace() -> None:
    """A 429 with only a Retry-After while the server's headers show room: that call's trouble."""
    clock = VirtualClock()
    lim = RateLimiter(1200, 60.0, clock=clock)
    lim.on_success(limit=1200, remaining=900, reset=30.0, grant=await lim.acquire())
    before = lim.rate
    lim.on_rate_limited(retry_after=1.0, grant=await lim.acquire())
    assert lim.rate == before and not lim.finder.in_episode
    start = clock.now()
    await lim.acquire()
    assert clock.now() - start <= 60 / 1200 * 1.015 + 1e-9  # no pause for everyone: the call waits alone
    # the same 429 when the answers showed no room is the pace's trouble
    lim.on_success(limit=1200, remaining=0, reset=30.0)
    lim.on_rate_limited(retry_after=1.0, grant=await lim.acquire())
    assert lim.rate is not None and lim.rate < before


@pytest.mark.parametrize("counts_refused", [False, True])
async def test_refused_calls_count_only_for_the_total_counter(counts_refused: bool) -> None:
    """60 answered, then 10 refused in flight: the success counter frees when the first answered
    leaves the window; the total counter, which counted the 10 refused too, frees 10 grants later."""
    clock = VirtualClock()
    lim = RateLimiter(None, 60.0, clock=clock)
    start = clock.now()
    for _ in range(60):
        lim.on_success(grant=await lim.acquire())
        clock.t += 0.1
    refused = [await lim.acquire() for _ in range(10)]
    for grant in refused:
        clock.t += 0.1
        lim.on_rate_limited(grant=grant, stated=(60, 1.0, counts_refused))
    await lim.acquire()
    waited_for = 10 * 0.1 if counts_refused else 0.0  # the 11th grant, 1 s later, or the first
    assert clock.now() == pytest.approx(start + waited_for + 60.0 * 1.015, abs=1e-6)
