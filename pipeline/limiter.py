"""Client-side pacing that matches an account's rate tier, learns the window the server counts in,
and finds the rate by itself when nobody gives one.

Why not a classic token bucket: a bucket that starts full at a minute's capacity (300, refilling
5/s) lets through up to twice the limit in the first minute. Why not ``aiolimiter``: it is that
bucket (burst = capacity), asyncio-only, takes no clock and cannot slow down on a 429.

So this is GCRA (the "virtual scheduling" form of a token bucket) with almost no burst:
requests are granted at least ``interval = window / limit × (1 + safety)`` apart, with a small
catch-up tolerance ``tau`` for scheduler lateness. With ``tau < safety × window`` no window of
``window`` seconds, anywhere, holds more than ``limit`` grants, whatever algorithm the server
counts with (fixed window, sliding log, token bucket), and the server still sees
``1 / (1 + safety)`` of its allowed rate.

Three things set the pace, and the slowest wins:

1. **The job's quota**: the tier (or ``requests_per_minute``) per the job's window.
2. **The server's quota** (:class:`ServerWindow`). ``X-RateLimit-Limit: 100`` alone does not say
   per what (a minute? ten seconds?), so it never lowers the pace by itself. The window is
   learned as the longest span the server shows: ``X-RateLimit-Reset`` and ``Retry-After`` (the
   time until capacity returns, never longer than the window), and how ``Remaining`` refills
   (when the server says it has counted ``u`` requests, our ``u`` most recent grants fit in its
   window). Each is a lower bound, so the learned rate errs towards fast, where the server's own
   429s and ``Remaining: 0`` correct it.
3. **The rate found by AIMD** (:class:`RateFinder`), once a 429 arrives: additive increase,
   multiplicative decrease, the way TCP finds a link's capacity. This is how a job with no rate
   given (enterprise) settles near a server that limits it anyway and says nothing else (a
   LiteLLM-style proxy: 429s with no ``Retry-After`` and no ``X-RateLimit-*``).

Two kinds of 429 are not a pace to find. A relay that states its limit in words (new-api's
``1分钟内最多请求60次``, its "minute" being the job's window) says how it counts too: a sliding log.
Its "total" counter (``总请求数``) logs each call when it arrives, refused ones too; its success
counter logs each call when it is answered, and only if it was not refused. So the limiter keeps
the same logs: its grants (refused ones too, or not, as the counter does), which count calls still
in flight, and its answers, which are logged when the server logs them (a slow answer is counted
late). A grant goes out while fewer than M of either are in the last window (plus the safety
margin): a burst of M each window, as the server allows, with no probing. And a 429 that carries
no rate headers while the server's other answers show room is that call's trouble: the call waits
its ``Retry-After`` in the retry policy, the pace stays.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import anyio

__all__ = ["Clock", "MonotonicClock", "Quota", "RateFinder", "RateLimiter", "ServerWindow"]


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    async def sleep_unless(self, event: anyio.Event, seconds: float) -> None:
        """Sleep ``seconds``, or until ``event`` is set if that comes first."""
        ...


class MonotonicClock:
    """Real time."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)

    async def sleep_unless(self, event: anyio.Event, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await event.wait()


@dataclass(frozen=True, slots=True)
class Quota:
    """At most ``limit`` requests in any ``window`` seconds."""

    limit: float
    window: float

    @property
    def per_second(self) -> float:
        return self.limit / self.window


# A Reset or Retry-After longer than this is a date misread or a ban, not a rate window.
_LONGEST_WINDOW = 86400.0
# Grant times kept to read how Remaining refills: enough for any limit seen in practice.
_MAX_GRANT_LOG = 1 << 16


class ServerWindow:
    """What the server's headers say about how it counts: its limit and the window it counts in.

    ``window`` is the longest span the headers have shown so far. For a fixed window or a sliding
    log it converges from below on the true window; for a token bucket (whose ``Reset`` is the next
    token, a fraction of its window) it stays short, which only means the bucket never sets the pace
    here: its 429s and ``Remaining: 0`` do.
    """

    def __init__(self) -> None:
        self.limit: int | None = None
        self.window = 0.0
        self._times: list[float] = []  # ring of grant times by grant number, once a limit is known
        self._first = 0  # the first grant number logged
        self._last = 0  # the latest grant number (older ones are overwritten past the ring)

    @property
    def quota(self) -> Quota | None:
        """The server's quota, once it has shown both a limit and a window."""
        if self.limit is None or self.window <= 0:
            return None
        return Quota(self.limit, self.window)

    def sent(self, grant: int, now: float) -> None:
        """Log a grant's time (only once the server has shown a limit: until then nothing reads it)."""
        self._last = grant
        if self._times:
            self._times[grant % len(self._times)] = now

    def observe(self, grant: int, limit: int | None, remaining: int | None,
                *spans: float | None) -> None:
        """Headers of the answer to grant number ``grant``; ``spans`` are Reset / Retry-After seconds."""
        for span in spans:
            if span is not None and 0 < span < _LONGEST_WINDOW:
                self.window = max(self.window, span)
        if limit is not None and limit > 0:
            self._know_limit(limit)
            if remaining is not None:
                self._refill_span(grant, limit - remaining)

    def _know_limit(self, limit: int) -> None:
        self.limit = limit
        size = min(limit + 1, _MAX_GRANT_LOG)
        if len(self._times) < size:  # grants so far (some still in flight) were not logged: from the next
            self._times, self._first = [0.0] * size, self._last + 1

    def _refill_span(self, grant: int, counted: int) -> None:
        # The server counted ``counted`` requests in its window when it answered this grant; they
        # are (at most) our grants up to this one, so the ``counted`` latest of them fit in a window.
        oldest = grant - counted + 1
        if counted < 1 or oldest < max(self._first, self._last - len(self._times) + 1) or grant > self._last:
            return
        span = self._times[grant % len(self._times)] - self._times[oldest % len(self._times)]
        if span < _LONGEST_WINDOW:
            self.window = max(self.window, span)


# Grant times kept for a stated limit's window: enough for any per-minute limit a relay states.
_SENT_LOG = 4096
# Successes a cycle needs before what the server admitted in it may hold the found rate down.
_MIN_SPAN = 10
# how much longer each refused probe waits than the one before
PROBE_GROWTH = 2.0


class RateFinder:
    """AIMD over 429s: a request rate found by probing, for servers that do not say theirs.

    A 429 opens an *episode*: the rate drops to ``decrease ×`` the pace it came at, once per
    episode (429s for requests granted before it say nothing new). Without a ``Retry-After``
    nobody knows when the server takes requests again, so one probe at a time goes out, ``probe``
    seconds apart, doubling after each refused probe (up to ``max_probe``); the first probe that
    succeeds closes the episode. The rate is then also held to what the server really admitted
    since the previous episode closed (the first time: since the first grant): over a whole
    cycle a fixed window or a sliding log admits its limit per window, whatever the pace was.
    Each success then adds ``increase`` requests/s (additive increase), until the next 429.

    Written here because no library fits: ``aiolimiter`` and ``limits`` pace to a rate they are
    given; the AIMD packages on PyPI (``aimd-limiter`` 0.1, ``ace-concurrency`` 0.1) are
    single-release, asyncio-only, take no clock, and cap concurrency or rate without a notion of
    an episode or of probing a server that has stopped answering.
    """

    def __init__(self, *, decrease: float, recover: float, probe: float, max_probe: float) -> None:
        self.decrease = decrease
        self.recover = recover
        self.min_probe = probe
        self.max_probe = max_probe
        self.rate: float | None = None  # requests/s found; None: no 429 yet (or recovered past every quota)
        self.in_episode = False
        self.blocked = False  # in an episode with no Retry-After: only probes go out
        self.timed = False  # the last episode came with a Retry-After
        self.recover_to = 0.0  # the pace the last episode decreased from
        self.probe_delay = probe
        self.fresh_from = 0  # grants numbered below this were sent before the last change of pace
        self.successes = 0
        self._since: tuple[float, int] | None = None  # (time, successes) at the last close or first grant
        self._unpaced = False  # the episode began with no pace at all (an unlimited start)
        self._opened = 0.0  # when the current (or last) episode opened
        self._last_span: float | None = None  # how long the last episode lasted, open to close

    def start(self, now: float) -> None:
        if self._since is None:
            self._since = (now, 0)

    def admitted(self, now: float, *, exclude: int = 0) -> float | None:
        """Successes per second since the last episode closed (or the first grant)."""
        if self._since is None:
            return None
        since, before = self._since
        done = self.successes - before - exclude
        return done / (now - since) if now > since and done > 0 else None

    def rate_limited(self, now: float, grant: int, pace: float | None, granted: int,
                     retry_after: float | None) -> None:
        """A 429 for grant number ``grant``; ``pace`` is the rate (requests/s) it was sent at."""
        if grant < self.fresh_from:
            return
        if self.blocked:  # a refused probe: the server is still full
            self.probe_delay = min(self.probe_delay * PROBE_GROWTH, self.max_probe)
        elif not self.in_episode:
            self._open_episode(now, pace, granted, retry_after)

    def _open_episode(self, now: float, pace: float | None, granted: int,
                      retry_after: float | None) -> None:
        admitted = self.admitted(now)
        base = pace
        # a pace far above what the server admitted since the last episode was a guess that failed
        # (a token bucket's burst looked like a rate): start again from what it really admitted
        if admitted is not None and (base is None or admitted < base / 3):
            base = admitted
        rate = None if base is None else self.decrease * base
        if self._refused_right_after_a_probe() and self._last_span:
            # nothing but the probe got through the last episode before this refusal: the server
            # lets requests through at about one per that episode (a slow refill, as a token
            # bucket's after its burst), a measured rate, not a guess to cut by ``decrease``; cut
            # by it, a bucket refused one request per episode all the way down from its burst's pace
            rate = 1 / self._last_span if rate is None else min(rate, 1 / self._last_span)
        if rate is not None:
            self.rate = max(1 / self.max_probe, rate)
            self.recover_to = base if base is not None else rate
        self.fresh_from = granted + 1
        self.in_episode = True
        self._opened = now
        self._unpaced = pace is None
        # with a Retry-After the server has said when: the pause covers it, no probing needed, and
        # the pace it came at was probably right (a blip): recover that fast, probe beyond it slowly
        self.blocked = retry_after is None
        self.timed = retry_after is not None
        self.probe_delay = max(self.min_probe, 1 / self.rate if self.rate else 0.0)

    def succeeded(self, now: float, grant: int, granted: int, ceiling: float | None, step: float) -> bool:
        """A success for grant number ``grant``; True when the found rate changed. ``step`` is the
        additive increase (requests/s) when probing above the last pace that was refused."""
        self.successes += 1
        if self.in_episode:
            if grant < self.fresh_from:
                return False
            self._close_episode(now, granted)
            return True
        if self.rate is None:
            return False
        if self.timed and self.rate < self.recover_to:
            step = max(step, self.recover * self.recover_to)
        self.rate += step
        if ceiling is not None and self.rate >= ceiling:
            self.rate = None  # recovered: the quotas set the pace again
        return True

    def _refused_right_after_a_probe(self) -> bool:
        """No success since the last episode closed (its probe's aside)."""
        return self._last_span is not None and self._since is not None and self.successes == self._since[1]

    def _close_episode(self, now: float, granted: int) -> None:
        self._last_span = now - self._opened
        self._hold_to_admitted(now)
        self.in_episode = self.blocked = False
        self.fresh_from = granted + 1  # other probes still out were sent while the server was full
        self._since = (now, self.successes)

    def _hold_to_admitted(self, now: float) -> None:
        # A fixed window lets a pace above its rate through until it fills, so the pace can creep
        # up; what the server admitted over the cycle (the probe aside) cannot. (After a
        # Retry-After the quick recovery still climbs back to the pace the 429 came at.)
        admitted = self.admitted(now, exclude=1)
        if admitted is None or self._since is None:
            return
        if self._unpaced or self.rate is None:  # after an unpaced start: its limit over its window
            self.rate = admitted if self.rate is None else min(self.rate, admitted)
        elif self.successes - self._since[1] > _MIN_SPAN:  # fewer are too coarse a count
            self.rate = min(self.rate, admitted)


class RateLimiter:
    """Grants requests no faster than ``limit`` per ``window`` seconds (``limit=None``: unlimited),
    nor faster than the server's own quota or the rate its 429s allow.

    ``acquire`` returns the grant's number; passing it back with ``on_success`` /
    ``on_rate_limited`` lets the limiter tell a 429 that reflects its current pace from one for a
    request sent before it last slowed down.
    """

    def __init__(
        self,
        limit: float | None,
        window: float = 60.0,
        *,
        clock: Clock | None = None,
        safety: float = 0.015,
        decrease: float = 0.8,
        # requests/s added per job window of successes: 0.25 cost 23 / 22 refused calls of 600 (fixed
        # window / sliding log, 60/min, header-less, virtual time) against 17 / 12 at 0.125, at the
        # same wall time within 5 %
        increase: float = 0.125,
        recover_per_success: float = 0.05,
    ) -> None:
        if limit is not None and limit <= 0:
            raise ValueError("a rate limit must be positive")
        self._clock = clock or MonotonicClock()
        self._window = window
        self._safety = safety
        self._increase = increase
        self._configured = Quota(float(limit), window) if limit is not None else None
        # what a relay's 429s said in words: sliding logs' limits, each with whether refused calls count
        self._stated: dict[Quota, bool] = {}
        self._sent_at: deque[float] = deque(maxlen=_SENT_LOG)  # the latest grants' times
        self._answered_at: deque[float] = deque(maxlen=_SENT_LOG)  # the latest successes' answer times
        self._refused: set[int] = set()  # grants a success counter refused (it does not log them)
        self._slack = 0.0  # added room after the server refused what our logs allowed
        self._stated_before = False
        self._room: int | None = None  # Remaining on the latest answer that sent it
        self.server = ServerWindow()
        # probes start at a "second" of the job's "minute"
        self.finder = RateFinder(decrease=decrease, recover=recover_per_success, probe=window / 60,
                                 max_probe=window)
        self._interval: float | None = None  # seconds between grants; None: unlimited
        self._tau = 0.0
        self._tat: float | None = None  # theoretical arrival time of the next grant
        self._paused_until = 0.0
        self._probe_at = 0.0
        self._lock = anyio.Lock()  # one waiter at a time, FIFO: each sleeps only its shortfall
        self._unblocked: anyio.Event | None = None  # made when someone waits for a probe
        self.granted = 0
        self.rate_limited = 0
        self._repace()

    # -- reading -----------------------------------------------------------------------------
    @property
    def unlimited(self) -> bool:
        return self._interval is None and not self.finder.blocked

    @property
    def rate(self) -> float | None:
        """Current pace in requests per job window (below the target after a 429)."""
        return None if self._interval is None else self._window / self._interval * (1 + self._safety)

    @property
    def target(self) -> float | None:
        """The slowest quota in requests per job window: the job's, or the server's once learned."""
        ceiling = self._ceiling()
        return None if ceiling is None else ceiling * self._window

    def learned(self) -> dict[str, float | int | None]:
        """What the limiter learned, for the run report (rates per job window, its "minute")."""
        return {
            "server_limit": self.server.limit,
            "server_window_seconds": round(self.server.window, 3) if self.server.quota else None,
            "pace_per_minute": None if self.rate is None else round(self.rate, 2),
            "found_per_minute": None if self.finder.rate is None else round(self.finder.rate * self._window, 2),
            "stated_per_minute": (round(min(q.per_second for q in self._stated) * self._window, 2)
                                  if self._stated else None),
        }

    @property
    def patience(self) -> float:
        """How long a row should keep retrying 429s: several times the longest window known, so
        that it outlasts the server's window and the limiter's probing."""
        return 5 * max(self._window, self.server.window)

    def _quotas(self) -> list[Quota]:
        # a stated limit past what the grant log holds is paced to instead of logged
        paced = [q for q in self._stated if q.limit > _SENT_LOG]
        return [q for q in (self._configured, self.server.quota, *paced) if q is not None]

    def _ceiling(self) -> float | None:
        """The slowest quota, in requests per second."""
        return min((q.per_second for q in self._quotas()), default=None)

    def _repace(self) -> None:
        """Recompute the interval and the catch-up tolerance after anything they depend on changed."""
        quotas = self._quotas()
        spacings = [q.window / q.limit * (1 + self._safety) for q in quotas]
        if self.finder.rate is not None:
            spacings.append(1 / self.finder.rate)
        self._interval = max(spacings, default=None)
        if self._interval is None:
            return
        # catch-up allowed for lateness: half the safety margin of each quota's window keeps every
        # window of it under its limit, whatever the interval is now or was (AIMD changes it), as
        # long as no interval is shorter than the quota's spacing. A quota more than twice as fast
        # as the slowest (a token bucket's short-looking window) is far from binding: left out,
        # it does not take the catch-up away.
        slowest = min((q.per_second for q in quotas), default=None)
        near = [q for q in quotas if slowest is not None and q.per_second <= 2 * slowest]
        self._tau = min([self._interval, *(self._safety * q.window / 2 for q in near)])

    # -- granting ----------------------------------------------------------------------------
    def grant_now(self) -> int | None:
        """A grant without waiting, when nothing paces the calls (no rate, no pause, no probe)."""
        if self._interval is None and not self.finder.blocked and not self._stated:
            now = self._clock.now()
            if now >= self._paused_until:
                return self._grant(now)
        return None

    async def acquire(self) -> int:
        """Wait until the next request may be sent; returns its grant number."""
        granted = self.grant_now()
        if granted is not None:
            return granted
        async with self._lock:
            while True:
                now = self._clock.now()
                wait = self._earliest(now) - now
                if wait <= 0:
                    return self._grant(now)
                if self.finder.blocked:  # until the next probe, unless a probe gets through first
                    self._unblocked = self._unblocked or anyio.Event()
                    await self._clock.sleep_unless(self._unblocked, wait)
                else:
                    await self._clock.sleep(wait)

    def _earliest(self, now: float) -> float:
        earliest = max(self._paused_until, self._log_frees())
        if self.finder.blocked:
            return max(earliest, self._probe_at)
        if self._interval is not None and self._tat is not None:
            earliest = max(earliest, self._tat - self._tau)
        return earliest

    def _grant(self, now: float) -> int:
        if self.finder.blocked:
            self._probe_at = now + self.finder.probe_delay  # one probe at a time
        elif self._interval is not None:
            # the first grant has no lateness to make up: the next comes one interval later;
            # idle time earns no credit: the schedule restarts from now
            tat = self._tat if self._tat is not None else now + self._tau
            self._tat = max(tat, now) + self._interval
        self.granted += 1
        self._sent_at.append(now)
        self.finder.start(now)
        self.server.sent(self.granted, now)
        return self.granted

    # -- feedback ----------------------------------------------------------------------------
    def on_success(self, limit: int | None = None, remaining: int | None = None,
                   reset: float | None = None, *, grant: int | None = None) -> None:
        """A call went through; headers (when sent) may still tell us to slow down."""
        grant = self.granted if grant is None else grant
        self._answered_at.append(self._clock.now())  # what a success counter logs
        if remaining is not None:
            self._room = remaining
        if limit is None and remaining is None and reset is None:
            if self.finder.rate is None and not self.finder.in_episode:
                self.finder.successes += 1  # the fast path: nothing to learn
                return
        else:
            self._observe(grant, limit, remaining, reset)
        was_blocked = self.finder.blocked
        # additive increase paced to the window the server counts in (the job's until one is known):
        # a fixed window shows an overshoot only when it fills, so probing faster only buys 429s
        step = self._increase / (self.server.window if self.server.quota is not None else self._window)
        if self.finder.succeeded(self._clock.now(), grant, self.granted, self._ceiling(), step):
            if was_blocked:
                self._resume_after_probe()
            self._repace()

    def _resume_after_probe(self) -> None:
        self._tat = None  # pace from now, with no credit for the wait
        if self._unblocked is not None:
            self._unblocked.set()  # wake the waiter sleeping until the next probe
            self._unblocked = None

    def on_rate_limited(self, retry_after: float | None = None, limit: int | None = None,
                        remaining: int | None = None, reset: float | None = None, *,
                        grant: int | None = None, stated: tuple[int, float, bool] | None = None) -> None:
        """The server said RATE_LIMIT: slow down, and pause for ``Retry-After`` when given.

        ``stated`` is the limit a relay's message gave, (requests, job windows, whether refused
        requests count): keep to it."""
        self.rate_limited += 1
        now = self._clock.now()
        grant = self.granted if grant is None else grant
        if stated is not None:
            self._learn_stated(now, grant, *stated)
            return
        if limit is None and remaining is None and reset is None and self._room is not None and self._room > 1:
            return  # a lone 429 while the server's answers show room: that call's trouble, not our pace
        self.server.observe(grant, limit, None, reset, retry_after)
        self._pause(now, retry_after)
        pace = None if self._interval is None else 1 / self._interval
        if pace is None and retry_after is not None and not self.finder.in_episode:
            return  # unpaced, and the server said when: the pause is all (a blip needs no rate)
        self.finder.start(now)
        self.finder.rate_limited(now, grant, pace, self.granted, retry_after)
        if self.finder.blocked:
            self._probe_at = max(self._probe_at, now + self.finder.probe_delay)
        self._repace()

    def _log_frees(self) -> float:
        """When our logs have room under every stated limit: the M-th latest call each counts
        leaves its window."""
        frees = 0.0
        for stated, counts_refused in self._stated.items():
            n = int(stated.limit)
            if n > _SENT_LOG:
                continue
            oldest = [self._latest_grant(n, self.granted + 1, counts_refused)]
            if not counts_refused and len(self._answered_at) >= n:
                oldest.append(self._answered_at[-n])
            counted = [t for t in oldest if t is not None]
            if counted:
                frees = max(frees, max(counted) + stated.window * (1 + self._safety) + self._slack)
        return frees

    def _latest_grant(self, count: int, before: int, counts_refused: bool) -> float | None:
        """When the ``count``-th latest grant numbered below ``before`` was sent (skipping the ones a
        success counter refused, unless they count); ``None`` when fewer are logged."""
        if counts_refused or not self._refused:
            return self._sent_time(before - count)
        first = self.granted - len(self._sent_at) + 1
        seen = 0
        for grant in range(min(before - 1, self.granted), first - 1, -1):
            if grant not in self._refused:
                seen += 1
                if seen == count:
                    return self._sent_at[grant - first]
        return None

    def _learn_stated(self, now: float, grant: int, count: int, windows: float, counts_refused: bool) -> None:
        quota = Quota(count, windows * self._window)
        if quota not in self._stated:
            self._stated[quota] = counts_refused
            self._repace()
        # The server counted ``count`` calls in its window before this one: our latest answers (a
        # success counter), or at most our grants before this one (a total counter). The oldest of
        # them leaves the window ``quota.window`` after it was counted. (When we made fewer, older
        # calls were counted too: they leave before our first does.)
        if counts_refused:
            oldest = self._sent_time(max(1, grant - count))
        else:
            self._refused.add(grant)
            if len(self._refused) > _SENT_LOG:  # forget grants the log no longer holds
                self._refused = {g for g in self._refused if g > self.granted - _SENT_LOG}
            log = self._answered_at
            oldest = log[-count] if len(log) >= count else log[0] if log else None
        frees = (now if oldest is None else oldest) + quota.window
        if self._stated_before and frees <= now:
            # our logs saw room the server did not (it counted a call later than we did): leave
            # that much more room from now on, and wait it now
            self._slack += quota.window / quota.limit
            frees = now + quota.window / quota.limit
        self._stated_before = True
        self._pause(now, frees - now)

    def _sent_time(self, grant: int) -> float | None:
        """When grant number ``grant`` was sent, if it is among the latest logged."""
        index = grant - (self.granted - len(self._sent_at)) - 1
        return self._sent_at[index] if 0 <= index < len(self._sent_at) else None

    def _observe(self, grant: int, limit: int | None, remaining: int | None, reset: float | None) -> None:
        before = self.server.quota
        self.server.observe(grant, limit, remaining, reset)
        if self.server.quota != before:
            self._repace()
        # Servers mean different things by "reset": when a slot frees (fixed window) or when the
        # whole window has refilled (sliding log, token bucket). A reset longer than our interval
        # is the second kind: pacing already waits for the next slot, and a 429's Retry-After
        # corrects us if not. A shorter one is a boundary worth waiting for.
        interval = self._interval if self._interval is not None else 0.0
        if remaining is not None and remaining <= 0 and reset is not None and reset <= interval:
            self._pause(self._clock.now(), reset)

    def _pause(self, now: float, seconds: float | None) -> None:
        if seconds and seconds > 0:
            self._paused_until = max(self._paused_until, now + seconds)
