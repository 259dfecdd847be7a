"""``make bench``: how close the limiter comes to a server's real rate (issue 10, parts 1 and 2).

    .venv/bin/python bench/rate_limits.py [--scale S] [--repeat 1] [--algorithms fixed_window,...]

Each scenario runs against every window algorithm of the sandbox, over real HTTP on 127.0.0.1,
with time scaled down (scenario 1 × 0.25, scenario 2 × 0.1, or ``--scale``), 50 ms per call
(scaled likewise), 16 calls in flight, the sandbox in a thread of the same process:

1. **A server counting in a shorter window.** The job is told 600 requests/minute; the key allows
   100 per 10 s (the same average) and says so in ``X-RateLimit-*`` headers. 400 rows: ideal 40 s.
2. **No rate given.** The job is ``enterprise`` (unlimited); a LiteLLM-style relay allows 60 per
   minute and answers 429 with no body, no ``Retry-After`` and no ``X-RateLimit-*``. 600 rows:
   ideal 10 minutes; and the same with 150 rows (the issue's case), where the first burst weighs
   more: it costs up to ``concurrency`` 429s whatever the client does (they are already in flight
   when the limit is reached), 16 of about 170 calls here.

And two new-api relay cases (the sandbox's ``[new_api]`` mode, issue 21), time × 0.1, no rate given:

3. **The model rate limit, stated in words.** 60 per minute on new-api's success counter (a
   sliding log, 429 ``您已达到请求数限制：1分钟内最多请求60次``, no headers). 150 rows: ideal 120 s (60
   at once, 60 a window later, 30 a window after). Goal: wall ≤ 1.15 × ideal, ≤ 12 refusals.
   Calls take 25-75 ms (``latency_jitter`` 0.5: a model's answers take varying times), time × 0.25
   (shorter, and the client's own work on a call weighs against it); 3b. the same with every
   call taking 50 ms exactly, at the scale given: calls go and come back in lockstep.
4. **A saturated upstream.** 10 % of calls get one-api's 429 ``当前分组上游负载已饱和``, on an
   unlimited key, 200 rows; the ideal is the same run without it. Goal: every row ok, wall ≤ 1.3×.

And MOMO's case of issue 21, time × 0.1:

5. **A lone 429 is not a new limit.** The job is told 1,200 a minute; the server counts 1,200 a
   minute (sliding log, ``X-RateLimit-*`` on every answer) and refuses 1 % of calls with a 429 of
   its own (``Retry-After`` one second, no rate headers). 2,400 rows: ideal 120 s. "Pace" is the
   calls the server saw a minute, as a share of the tier, over the calls' span less its gaps of
   more than 0.5 s with no call (credited as honoured pauses; on a loaded machine its own stalls
   count too). Goal: every row ok, pace ≥ 95 % of the tier.

Measured 2026-12-07 (``--only relay --repeat 3`` then ``--only momo --repeat 3``, load average
1.8-3.1 from another engineer's benchmarks, 2 cores): (3) wall 1.04×, 3 refusals of 153; (3b)
wall 1.07-1.09×, 16 refusals of 166: one per call in flight (see docs/benchmarks.md); (4) 1.05× a run
without saturation (it was 5.04×: the saturated calls waited an error's 0.5, 1, 2 s, unscaled);
(5) pace 97.5 % of the tier, busiest minute 1,168 of 1,200, wall 1.15×.

"Ideal" is rows ÷ the server's average rate (a fixed window can beat it, by its first burst).
"Wall" is the whole ``run_job`` (reading, journal, Parquet output included); "calls" is the span
from the first to the last call the server saw. All times are unscaled. "429s" are counted in the
server's request log, as a share of all calls it saw. Goals: (1) wall ≤ 1.15 × ideal, ≤ 1 % extra
calls, no row lost; (2) every row ok, ≤ 10 % of calls answered 429, wall ≤ 1.3 × ideal.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from _common import run_local

ALGORITHMS = ("fixed_window", "sliding_log", "token_bucket")
CONCURRENCY = 16


@dataclass(frozen=True)
class Scenario:
    name: str
    rows: int
    limit: int  # what the server allows per server_window
    server_window: float  # real (unscaled) seconds
    goal_wall: float
    goal_extra: float  # percent of calls
    scale: float  # real seconds per scenario second
    told: bool  # the job is told 600/min and the server sends X-RateLimit-* (else: enterprise, header-less)


WINDOW = Scenario("1. told 600/min, server 100 per 10 s (headers)", 400, 100, 10.0, 1.15, 1.0, 0.25, True)
FIND = Scenario("2. no rate given, server 60/min (header-less 429s)", 600, 60, 60.0, 1.3, 10.0, 0.1, False)
FIND_SHORT = Scenario("2b. the same, 150 rows", 150, 60, 60.0, 1.3, 10.0, 0.1, False)


@dataclass(frozen=True)
class Result:
    wall: float  # unscaled seconds
    span: float  # first to last call at the server, unscaled seconds
    ideal: float
    ok: int
    rows: int
    calls: int
    refused: int
    learned: dict[str, Any]
    scale: float

    @property
    def ratio(self) -> float:
        return self.wall / self.ideal

    @property
    def extra(self) -> float:
        return 100 * self.refused / self.calls


def _questions(path: Path, n: int) -> Path:
    import polars as pl

    pl.DataFrame({"id": [f"q{i:05d}" for i in range(n)],
                  "question": [f"Question {i}: what is {i} squared?" for i in range(n)]}).write_csv(path)
    return path


def _job(kind: str, data: Path, out: Path, url: str, limits: dict[str, Any]) -> Any:
    from pipeline import Job
    from pipeline.sandbox import RELAY_PRICES

    if kind == "momo":
        provider = {"kind": "momo", "base_url": url, "agent_id": 159, "max_tokens": 300}
    else:
        price = RELAY_PRICES["gpt-4o-mini"]
        provider = {"kind": "openai", "model": "gpt-4o-mini", "max_tokens": 100, "base_url": url,
                    "prompt_price_per_million": price.prompt, "completion_price_per_million": price.completion}
    return Job.from_dict({"input": {"path": str(data), "id_column": "id"}, "prompt": {"template": "{question}"},
                          "provider": provider, "limits": {"concurrency": CONCURRENCY, **limits},
                          "output": {"path": str(out)}})


async def _run_job(job: Any, key: str, url: str) -> Any:
    return await run_local(job, key, url, max_connections=CONCURRENCY)


def run_once(scenario: Scenario, algorithm: str, scale: float, tmp: Path) -> Result:
    from pipeline.sandbox import KeyConfig, RelayKeyConfig, Sandbox, SandboxConfig

    minute = 60.0 * scale
    data = _questions(tmp / "q.csv", scenario.rows)
    out = tmp / f"out-{time.monotonic_ns()}.parquet"
    cfg = SandboxConfig(window_seconds=minute, algorithm=algorithm, latency_ms=50 * scale,
                        keys={"momo-bench": KeyConfig(limit=scenario.limit,
                                                      window_seconds=scenario.server_window * scale)},
                        relay_keys={"sk-bench": RelayKeyConfig(rpm=scenario.limit,
                                                               window_seconds=scenario.server_window * scale)})
    with Sandbox(cfg).running() as sb:
        if scenario.told:
            job = _job("momo", data, out, sb.momo_url, {"requests_per_minute": 600, "window_seconds": minute})
            key, url, path = "momo-bench", sb.momo_url, "/v1/agents/159"
        else:
            job = _job("openai", data, out, sb.relay_url, {"tier": "enterprise", "window_seconds": minute})
            key, url, path = "sk-bench", sb.relay_url, "/v1/chat/completions"
        t0 = time.perf_counter()
        report = anyio.run(_run_job, job, key, url)
        wall = time.perf_counter() - t0
        posts = [r for r in sb.records() if r["path"] == path]
    ideal = scenario.rows / (scenario.limit / scenario.server_window)
    span = max(r["ts"] for r in posts) - min(r["ts"] for r in posts)
    return Result(wall / scale, span / scale, ideal, report.stats.ok, scenario.rows, len(posts),
                  sum(r["status"] == 429 for r in posts), report.rate_limiter, scale)


def median_run(scenario: Scenario, algorithm: str, scale: float, repeat: int) -> Result:
    with tempfile.TemporaryDirectory(prefix="momo-bench-") as tmp:
        runs = [run_once(scenario, algorithm, scale, Path(tmp)) for _ in range(repeat)]
    middle = statistics.median_low(r.wall for r in runs)
    return next(r for r in runs if r.wall == middle)


def _row(algorithm: str, r: Result, scenario: Scenario) -> str:
    met = r.ok == r.rows and r.ratio <= scenario.goal_wall and r.extra <= scenario.goal_extra
    window = r.learned.get("server_window_seconds")
    found = r.learned.get("found_per_minute")
    learned = f"window {window / r.scale:.1f} s" if window else f"found {found or '-'}/min"
    return (f"| {algorithm:<12} | {r.ok}/{r.rows} | {r.ideal:4.0f} s | {r.wall:6.1f} s | {r.span:6.1f} s "
            f"| {r.ratio:5.2f}× "
            f"| {r.refused:3d} of {r.calls:4d} ({r.extra:4.1f} %) | {learned:<18} | {'yes' if met else 'NO'} |")


def relay_run(tmp: Path, rows: int, scale: float, *, rate_limit: int = 0, saturated: float = 0.0,
              jitter: float = 0.0) -> Result:
    """One run against the sandbox in new-api mode (unlimited job, 16 in flight, 50 ms a call)."""
    from pipeline.sandbox import FaultConfig, NewApiConfig, RelayKeyConfig, Sandbox, SandboxConfig

    minute = 60.0 * scale
    data = _questions(tmp / "q.csv", rows)
    out = tmp / f"out-{time.monotonic_ns()}.parquet"
    cfg = SandboxConfig(window_seconds=minute, latency_ms=50 * scale, latency_jitter=jitter,
                        relay_keys={"sk-bench": RelayKeyConfig()},
                        new_api=NewApiConfig(flavour="one-api" if saturated else "new-api",
                                             rate_limit_success=rate_limit),
                        faults=FaultConfig(upstream_saturated=saturated))
    with Sandbox(cfg).running() as sb:
        job = _job("openai", data, out, sb.relay_url, {"tier": "enterprise", "window_seconds": minute})
        t0 = time.perf_counter()
        report = anyio.run(_run_job, job, "sk-bench", sb.relay_url)
        wall = time.perf_counter() - t0
        posts = [r for r in sb.records() if r["path"] == "/v1/chat/completions"]
    ideal = (-(-rows // rate_limit) - 1) * 60.0 if rate_limit else 0.0
    span = max(r["ts"] for r in posts) - min(r["ts"] for r in posts)
    return Result(wall / scale, span / scale, ideal, report.stats.ok, rows, len(posts),
                  sum(r["status"] == 429 for r in posts), report.rate_limiter, scale)


def relay_cases(scale: float, repeat: int) -> None:
    print(f"\n3-4. new-api relay, no rate given (time scale {scale}, figures unscaled)")
    print("| case | rows ok | ideal | wall | calls | wall/ideal | 429s of calls | pace learned | goal met |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="momo-bench-") as tmp:
        def median(at: float = scale, **kw: Any) -> Result:
            runs = [relay_run(Path(tmp), scale=at, **kw) for _ in range(repeat)]
            middle = statistics.median_low(r.wall for r in runs)
            return next(r for r in runs if r.wall == middle)

        # a model's answers take varying times (here 25-75 ms); time × 0.25 at least, so that a
        # scaled call still takes many times the client's own work on it (at × 0.1, 5 ms calls
        # against ~1 ms of CPU each on a loaded machine, the refusals are the client's lag)
        for label, at, jitter in (("3. model rate limit 60/min", max(scale, 0.25), 0.5),
                                  ("3b. the same, every call 50 ms exactly", scale, 0.0)):
            limited = median(at, rows=150, rate_limit=60, jitter=jitter)
            met = limited.ok == limited.rows and limited.ratio <= 1.15 and limited.refused <= 12
            print(f"| {label} (× {at:g}) | {limited.ok}/{limited.rows} | {limited.ideal:.0f} s "
                  f"| {limited.wall:.1f} s | {limited.span:.1f} s | {limited.ratio:.2f}× "
                  f"| {limited.refused} of {limited.calls} "
                  f"| stated {limited.learned.get('stated_per_minute')}/min | {'yes' if met else 'NO'} |", flush=True)
        clear, busy = median(rows=200), median(rows=200, saturated=0.1)
        ratio = busy.wall / clear.wall
        met = busy.ok == busy.rows and ratio <= 1.3
        print(f"| 4. upstream saturated, 10 % | {busy.ok}/{busy.rows} | {clear.wall:.1f} s (without) "
              f"| {busy.wall:.1f} s | {busy.span:.1f} s | {ratio:.2f}× | {busy.refused} of {busy.calls} "
              f"| pace {busy.learned.get('pace_per_minute') or 'unlimited'} | {'yes' if met else 'NO'} |", flush=True)


@dataclass(frozen=True)
class Blip:
    """Case 5's figures, unscaled: what the server saw of a job told the tier it counts."""

    wall: float
    span: float  # first to last call at the server
    paused: float  # gaps of more than BLIP_GAP between calls, credited as honoured pauses
    calls: int
    spurious: int  # the injected 429s
    refused: int  # every 429 (the injected ones included)
    busiest: int  # most calls in any minute
    ok: int
    rows: int
    learned: dict[str, Any]

    @property
    def pace(self) -> float:
        """Calls a minute while the job was sending, as a share of the tier."""
        return self.calls / (self.span - self.paused) * 60 / BLIP_TIER


BLIP_TIER = 1200  # requests a minute: the job's and the server's
BLIP_GAP = 0.5  # seconds without a call: a pause (the tier spaces calls 0.05 s apart)


def _paused(times: list[float], gap: float) -> float:
    """The time between calls further apart than ``gap``: pauses, not pacing."""
    return sum(b - a for a, b in zip(times, times[1:], strict=False) if b - a > gap)


def momo_blip_run(tmp: Path, rows: int, scale: float, *, spurious: float = 0.01) -> Blip:
    """A MOMO job told 1,200 a minute against a server counting 1,200 a minute (sliding log,
    ``X-RateLimit-*`` on every answer) that refuses ``spurious`` of the calls with a 429 of its own
    (``Retry-After`` one second, no rate headers on it)."""
    from pipeline.sandbox import FaultConfig, KeyConfig, Sandbox, SandboxConfig

    minute = 60.0 * scale
    data = _questions(tmp / "q.csv", rows)
    out = tmp / f"out-{time.monotonic_ns()}.parquet"
    cfg = SandboxConfig(window_seconds=minute, algorithm="sliding_log", latency_ms=50 * scale,
                        keys={"momo-bench": KeyConfig(limit=BLIP_TIER)},
                        faults=FaultConfig(rate_limit=spurious))
    with Sandbox(cfg).running() as sb:
        job = _job("momo", data, out, sb.momo_url, {"requests_per_minute": BLIP_TIER, "window_seconds": minute})
        t0 = time.perf_counter()
        report = anyio.run(_run_job, job, "momo-bench", sb.momo_url)
        wall = time.perf_counter() - t0
        posts = [r for r in sb.records() if r["path"] == "/v1/agents/159"]
    times = sorted((r["ts"] - posts[0]["ts"]) / scale for r in posts)
    from pipeline.sandbox.log import max_in_any_window

    return Blip(wall / scale, times[-1] - times[0], _paused(times, BLIP_GAP), len(posts),
                sum(r.get("fault") == "rate_limit" for r in posts), sum(r["status"] == 429 for r in posts),
                max_in_any_window(times, 60.0), report.stats.ok, rows, report.rate_limiter)


def momo_blip_case(scale: float, repeat: int) -> None:
    print(f"\n5. MOMO, told {BLIP_TIER}/min, server {BLIP_TIER}/min (sliding log, headers), 1 % spurious 429s "
          f"(Retry-After 1 s, no rate headers); 2,400 rows (time scale {scale}, figures unscaled)")
    print("| rows ok | ideal | wall | wall/ideal | calls | pauses credited | pace, % of tier | busiest minute "
          "| 429s (spurious) | pace learned | goal met |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="momo-bench-") as tmp:
        runs = [momo_blip_run(Path(tmp), 2400, scale) for _ in range(repeat)]
    r = sorted(runs, key=lambda b: b.pace)[(len(runs) - 1) // 2]  # the median pace
    met = r.ok == r.rows and r.pace >= 0.95
    ideal = r.rows / BLIP_TIER * 60
    print(f"| {r.ok}/{r.rows} | {ideal:.0f} s | {r.wall:.1f} s | {r.wall / ideal:.2f}× | {r.span:.1f} s "
          f"| {r.paused:.1f} s "
          f"| {100 * r.pace:.1f} % | {r.busiest} of {BLIP_TIER} | {r.refused} ({r.spurious}) "
          f"| {r.learned.get('pace_per_minute')}/min | {'yes' if met else 'NO'} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, help="real seconds per scenario second (default: per scenario)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell; the median wall is shown")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument("--only", choices=["1", "2", "2b", "relay", "momo"], help="run one scenario")
    args = parser.parse_args()
    if args.only in (None, "relay"):
        relay_cases(args.scale or 0.1, args.repeat)
    if args.only in (None, "momo"):
        momo_blip_case(args.scale or 0.1, args.repeat)
    for scenario in (WINDOW, FIND, FIND_SHORT):
        if args.only and scenario.name.split(".")[0] != args.only:
            continue
        scale = args.scale or scenario.scale
        print(f"\n{scenario.name}: {scenario.rows} rows; goal wall ≤ {scenario.goal_wall}× ideal, "
              f"429s ≤ {scenario.goal_extra} % of calls (time scale {scale}, figures unscaled)")
        print("| server algorithm | rows ok | ideal | wall | calls | wall/ideal | 429s of calls | learned "
              "| goal met |")
        print("|---|---|---|---|---|---|---|---|---|")
        for algorithm in args.algorithms.split(","):
            print(_row(algorithm, median_run(scenario, algorithm, scale, args.repeat), scenario), flush=True)


if __name__ == "__main__":
    main()
