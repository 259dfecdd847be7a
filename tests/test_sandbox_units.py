"""The sandbox's pure parts: rate-limit algorithms, fault choice, answers, prices (no HTTP)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.labels.parse import LabelSpec, parse_label
from pipeline.sandbox import RELAY_PRICES, FaultConfig
from pipeline.sandbox.answers import completion_tokens
from pipeline.sandbox.catalog import make_agents, quota_units
from pipeline.sandbox.faults import FaultPicker
from pipeline.sandbox.labeller import styled
from pipeline.sandbox.ratelimit import FixedWindow, SlidingLog, TokenBucket, make_limiter

arrivals = st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=60).map(sorted)
limits = st.integers(1, 6)
WINDOW = 1.0


def admitted(limiter: FixedWindow | SlidingLog | TokenBucket, times: list[float]) -> list[float]:
    return [t for t in times if limiter.acquire(t).allowed]


@given(arrivals, limits)
def test_sliding_log_never_exceeds_the_limit_in_any_window(times: list[float], limit: int) -> None:
    ok = admitted(SlidingLog(limit, WINDOW), times)
    for t in ok:
        assert sum(t - WINDOW < u <= t for u in ok) <= limit


@given(arrivals, limits)
def test_fixed_window_counts_per_window_from_the_first_request(times: list[float], limit: int) -> None:
    ok = admitted(FixedWindow(limit, WINDOW), times)
    windows = Counter(int((t - times[0]) // WINDOW) for t in ok)
    assert max(windows.values()) <= limit


@given(arrivals, limits)
def test_token_bucket_allows_a_burst_then_the_refill_rate(times: list[float], limit: int) -> None:
    ok = admitted(TokenBucket(limit, WINDOW), times)
    for i, start in enumerate(ok):
        for j in range(i, len(ok)):
            assert j - i + 1 <= limit + (ok[j] - start) * limit / WINDOW + 1e-9


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_log", "token_bucket"])
@settings(max_examples=50)
@given(times=arrivals, limit=limits)
def test_reset_is_exactly_when_room_comes(algorithm: str, times: list[float], limit: int) -> None:
    limiter = make_limiter(algorithm, limit, WINDOW)  # type: ignore[arg-type]
    assert limiter is not None
    for t in times:
        decision = limiter.acquire(t)
        assert decision.reset > 0
        if decision.remaining == 0:  # accepted or not: after the reset there is room, and not before
            if decision.reset > 2e-3:
                assert not limiter.acquire(t + decision.reset - 1e-3).allowed
            assert limiter.acquire(t + decision.reset + 1e-9).allowed
            return


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_log", "token_bucket"])
@given(gaps=st.lists(st.floats(0, 0.3, allow_nan=False), min_size=1, max_size=80), limit=limits)
def test_a_client_that_waits_for_the_reset_is_never_rejected(algorithm: str, gaps: list[float], limit: int) -> None:
    limiter = make_limiter(algorithm, limit, WINDOW)  # type: ignore[arg-type]
    assert limiter is not None
    now = paused_until = 0.0
    for gap in gaps:
        now = max(now + gap, paused_until)
        decision = limiter.acquire(now)
        assert decision.allowed
        if decision.remaining == 0:
            paused_until = now + decision.reset + 1e-9


def test_unlimited_tier_has_no_limiter() -> None:
    assert make_limiter("sliding_log", None, 60.0) is None


# -- faults ------------------------------------------------------------------------------------------
def test_fault_frequencies_follow_the_probabilities() -> None:
    picker = FaultPicker(0, FaultConfig(server_error=0.2, reset=0.1, stream_drop=0.3))
    plain = Counter(picker.choose("k", f"p{i}", 1, call=True) for i in range(4000))
    assert 700 < plain["server_error"] < 900 and 300 < plain["reset"] < 500
    assert "stream_drop" not in plain  # a stream fault's share is "no fault" for a plain call
    streamed = Counter(picker.choose("k", f"s{i}", 1, call=True, stream=True) for i in range(4000))
    assert 1050 < streamed["stream_drop"] < 1350


def test_fault_choice_is_a_pure_function_of_its_inputs() -> None:
    faults = FaultConfig(server_error=0.3, malformed=0.3, max_faults_per_prompt=100)  # no cap: order is free
    one, two = FaultPicker(5, faults), FaultPicker(5, faults)
    calls = [("k", f"p{i % 5}", i // 5 + 1) for i in range(50)]
    assert [one.choose(*c, call=True) for c in calls] == [two.choose(*c, call=True) for c in reversed(calls)][::-1]


def test_format_variants_do_not_use_up_the_fault_budget() -> None:
    picker = FaultPicker(0, FaultConfig(stream_crlf=1.0, max_faults_per_prompt=1))
    assert [picker.choose("k", "p", n, call=True, stream=True) for n in (1, 2, 3)] == ["stream_crlf"] * 3
    picker.set_faults(FaultConfig(reset=1.0, max_faults_per_prompt=1))
    assert [picker.choose("k", "p", n, call=True) for n in (4, 5)] == ["reset", None]


def test_non_calls_are_faulted_only_when_asked() -> None:
    picker = FaultPicker(0, FaultConfig(server_error=1.0))
    assert picker.choose("k", "/v1/account/balance", 1, call=False) is None
    picker.set_faults(FaultConfig(server_error=1.0, apply_to="all"))
    assert picker.choose("k", "/v1/account/balance", 1, call=False) == "server_error"


# -- answers and prices ----------------------------------------------------------------------------------
@given(st.text(min_size=1, max_size=200), st.integers(1, 4096) | st.none())
def test_completion_tokens_range(prompt: str, max_tokens: int | None) -> None:
    n = completion_tokens(159, prompt, max_tokens)
    assert n == completion_tokens(159, prompt, max_tokens)
    assert 1 <= n <= 220 and (max_tokens is None and n >= 20 or n <= max_tokens)


SPEC = LabelSpec(("positive", "negative", "neutral"))


@pytest.mark.parametrize("style", range(11))
def test_label_styles_parse_with_the_clients_parser(style: int) -> None:
    for label in SPEC.labels:
        assert parse_label(styled(label, style), SPEC) == (label,)


def test_one_label_style_is_unparseable_on_purpose() -> None:
    assert parse_label(styled("positive", 11), SPEC) is None


def test_relay_quota_matches_the_price_table() -> None:
    for price in RELAY_PRICES.values():
        usd = (1000 * price.prompt + 500 * price.completion) / 1e6
        assert quota_units(price, 1000, 500) == round(usd * 500_000)


def test_agent_catalogue() -> None:
    agents = make_agents(45)
    assert len(agents) == 45 and {159, 301, 302} <= set(agents)
    assert agents[302].price_per_1k_tokens == 15 * agents[301].price_per_1k_tokens  # the strong labeller
    assert list(agents) == sorted(agents)
    assert len(make_agents(2)) == 2


@pytest.mark.parametrize("jitter", [0.0, 0.5])
def test_a_calls_latency_is_jittered_within_its_bounds_the_same_for_the_same_seed(jitter: float) -> None:
    from pipeline.sandbox import SandboxConfig
    from pipeline.sandbox.state import SandboxState

    def draws(seed: int) -> list[float]:
        state = SandboxState(SandboxConfig(seed=seed, latency_ms=40, latency_jitter=jitter))
        return [state.latency() for _ in range(200)]

    first = draws(1)
    assert all(0.04 * (1 - jitter) <= s <= 0.04 * (1 + jitter) for s in first)
    assert first == draws(1)
    if jitter:  # spread over the range, not stuck at one value
        assert max(first) - min(first) > 0.04 * jitter and first != draws(2)
    else:
        assert set(first) == {0.04}
