"""A new-api / one-api relay as its users live with it (the sandbox's ``[new_api]`` mode, real
sockets): the key's quota running out, a used-up key, no channel, a saturated upstream, the model
rate limit stated in words, the relay's own prices and request ids.

What was paid is checked on the sandbox's request log, and prices against figures worked out by
hand from the relay's ratios, not the sandbox's arithmetic."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from httpx import Client

from pipeline.job import RunOptions, estimate, run_job
from pipeline.sandbox import FaultConfig, NewApiConfig, RelayKeyConfig, Sandbox, SandboxConfig

from .helpers import posts, provider_for, questions, relay_job, run

KEY = "sk-sandbox-relay"
FAST = (0.001, 0.01)  # backoff: tests do not wait for real seconds
QUOTA_PER_USD = 500_000  # new-api's quota units per US dollar (what /api/status says)


def new_api(key_quota_usd: float | None = None, faults: FaultConfig | None = None, seed: int = 0,
            **mode: Any) -> SandboxConfig:
    return SandboxConfig(new_api=NewApiConfig(**mode), faults=faults or FaultConfig(), window_seconds=2.0,
                         relay_keys={KEY: RelayKeyConfig(quota_usd=key_quota_usd)}, seed=seed)


def calls_after_first(records: list[dict[str, Any]], codes: set[str]) -> tuple[int, int]:
    """(index of the first call refused with one of ``codes``, calls sent after it)."""
    sent = posts(records)
    first = next(i for i, r in enumerate(sent) if r["code"] in codes)
    return first, len(sent) - first - 1


def retried_after(sent: list[dict[str, Any]], i: int) -> float:
    """Seconds from call ``i`` to the next call of the same prompt, as the server saw them."""
    again = next(r for r in sent[i + 1:] if r.get("prompt_sha") == sent[i]["prompt_sha"])
    return float(again["ts"] - sent[i]["ts"])


def charged_usd(records: list[dict[str, Any]]) -> float:
    return sum(r["quota"] for r in posts(records) if r["charged"]) / QUOTA_PER_USD


# -- money -------------------------------------------------------------------------------------------
async def test_the_keys_quota_running_out_mid_run_stops_it_softly(tmp_path: Path) -> None:
    """About 30 calls' worth of the key's own quota for 100 rows: the relay refuses the reservation
    (403 pre_consume_token_quota_failed) or the spent key (401): exit 3, the calls in flight finish,
    nothing more goes out."""
    with Sandbox(new_api(key_quota_usd=0.002)).running() as sb:
        job = relay_job(questions(tmp_path / "q.csv", 100), tmp_path / "out.parquet", sb.relay_url, concurrency=8)
        report = await run(job, KEY, sb.relay_url, backoff=FAST, yes=True)  # the preflight would refuse it
        records = sb.records()
    assert report.exit_code == 3 and report.stop_code == "INSUFFICIENT_BALANCE"
    first, after = calls_after_first(records, {"pre_consume_token_quota_failed", "token_exhausted"})
    assert first > 10 and after <= job.limits.concurrency
    out = pl.read_parquet(job.output.path)
    ok = out.filter(pl.col("status") == "ok")
    assert ok.height == sum(r["charged"] for r in posts(records))  # each paid call is a kept answer
    assert ok["cost"].sum() == pytest.approx(charged_usd(records), rel=0.01)


async def test_a_used_up_key_is_out_of_money_not_a_bad_key(tmp_path: Path) -> None:
    with Sandbox(new_api(key_quota_usd=0.0)).running() as sb:
        job = relay_job(questions(tmp_path / "q.csv", 20), tmp_path / "out.parquet", sb.relay_url, concurrency=4)
        report = await run(job, KEY, sb.relay_url, backoff=FAST, yes=True)
        sent = posts(sb.records())
    assert report.exit_code == 3 and report.stop_code == "INSUFFICIENT_BALANCE"
    message = str(report.stop_message)
    assert "key's own quota" in message and "该令牌额度已用尽" in message
    assert KEY not in message and KEY[3:] not in message  # the relay's mask stays a mask
    assert 1 <= len(sent) <= job.limits.concurrency and not any(r["charged"] for r in sent)


# -- no channel ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("flavour", ["new-api", "one-api"])
async def test_no_channel_stops_after_the_first_calls_naming_model_and_group(tmp_path: Path, flavour: str) -> None:
    with Sandbox(new_api(flavour=flavour, group="vip", no_channel_models=["gpt-4o"])).running() as sb:
        job = relay_job(questions(tmp_path / "q.csv", 100), tmp_path / "out.parquet", sb.relay_url,
                        model="gpt-4o", concurrency=8)
        report = await run(job, KEY, sb.relay_url, backoff=FAST)
        sent = posts(sb.records())
    assert report.exit_code == 5 and report.stop_code == "AGENT_NOT_FOUND"
    assert "model gpt-4o in group vip" in str(report.stop_message)
    assert 1 <= len(sent) <= job.limits.concurrency and not any(r["charged"] for r in sent)


# -- a saturated upstream ---------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [None, 600.0])
async def test_a_saturated_upstream_backs_off_the_call_and_keeps_the_pace(tmp_path: Path, rate: float | None) -> None:
    """10 % of calls meet one-api's "上游负载已饱和" 429: every row ends ok, and the limiter is never
    told to slow down (unpaced stays unpaced; a told rate stays the told rate). The refused call
    comes back after its own short wait, counted in the job's (scaled) time, not after an error's
    backoff (here the default, 0.5 s and more)."""
    faults = FaultConfig(upstream_saturated=0.1)
    with Sandbox(new_api(flavour="one-api", faults=faults)).running() as sb:
        limits: dict[str, Any] = {"window_seconds": 2.0, "concurrency": 8}
        if rate is not None:
            limits["requests_per_minute"] = rate
        job = relay_job(questions(tmp_path / "q.csv", 200), tmp_path / "out.parquet", sb.relay_url, **limits)
        report = await run(job, KEY, sb.relay_url)  # the default backoff: the saturated calls must not use it
        sent = posts(sb.records())
    saturated = [i for i, r in enumerate(sent) if r["code"] == "upstream_saturated"]
    assert report.exit_code == 0 and report.stats.ok == 200
    assert len(saturated) >= 10  # the upstream really was saturated now and then
    # a scaled second is 1/30 s here: the busy wait is at most 8 of them, an error's at least 0.5 s
    assert statistics.median(retried_after(sent, i) for i in saturated) < 0.25
    assert report.stats.rate_limited == 0
    learned = report.rate_limiter
    assert learned["found_per_minute"] is None and learned["stated_per_minute"] is None
    assert learned["pace_per_minute"] == (None if rate is None else pytest.approx(rate))


# -- the model rate limit, stated in words ----------------------------------------------------------------
async def test_the_model_rate_limit_is_learned_from_its_message(tmp_path: Path) -> None:
    """60 per (scaled) minute on the success counter, no rate in the job: one burst of refusals
    while the first calls are in flight, then the job paces to the stated 60: the later windows'
    bursts are not refused again."""
    with Sandbox(new_api(rate_limit_success=60)).running() as sb:
        job = relay_job(questions(tmp_path / "q.csv", 150), tmp_path / "out.parquet", sb.relay_url,
                        window_seconds=2.0, concurrency=8)
        report = await run(job, KEY, sb.relay_url, backoff=FAST)
        sent = posts(sb.records())
    refused = [r for r in sent if r["code"] == "model_rate_limit"]
    assert report.exit_code == 0 and report.stats.ok == 150
    assert 1 <= len(refused) <= 12
    assert all(r["ts"] < sent[0]["ts"] + 2.0 for r in refused)  # every refusal in the first window
    assert report.rate_limiter["stated_per_minute"] == 60


async def test_the_total_counter_spends_refused_calls_too(tmp_path: Path) -> None:
    """The total counter (which counts refused calls) at 40 with the success counter at 60: the
    slower of the two stated limits sets the pace, and refusals stay a burst."""
    with Sandbox(new_api(rate_limit_success=60, rate_limit_total=40)).running() as sb:
        job = relay_job(questions(tmp_path / "q.csv", 100), tmp_path / "out.parquet", sb.relay_url,
                        window_seconds=2.0, concurrency=8)
        report = await run(job, KEY, sb.relay_url, backoff=FAST)
        refused = [r for r in posts(sb.records()) if r["code"] == "model_rate_limit"]
    assert report.exit_code == 0 and report.stats.ok == 100
    assert 1 <= len(refused) <= 12
    assert report.rate_limiter["stated_per_minute"] == 40


# -- the relay's own numbers ---------------------------------------------------------------------------------
async def test_a_relay_job_without_prices_is_priced_and_estimated_by_the_relay(tmp_path: Path) -> None:
    """No prices in the job: /api/pricing and /api/status give them. gpt-4o-mini's model ratio 0.075
    and completion ratio 4 in group ratio 1.5 are 0.075 × 1.5 × 10⁶ / 500,000 = $0.225 per million
    prompt tokens and 4 × that = $0.90 per million completion tokens (worked out by hand). A pilot
    of 20 rows learns the answers' length; the estimate is then within 15 % of what the relay charged."""
    with Sandbox(new_api(group_ratio=1.5)).running() as sb:
        job = relay_job(questions(tmp_path / "q.csv", 100), tmp_path / "out.parquet", sb.relay_url, concurrency=8,
                        provider={"prompt_price_per_million": None, "completion_price_per_million": None})
        provider = provider_for(job, KEY, sb.relay_url)
        try:
            price = await provider.price()
            est = await estimate(job, provider, pilot=20)
            report = await run_job(job, provider, options=RunOptions(backoff=FAST))
        finally:
            await provider.aclose()
        charged = charged_usd(sb.records())
    assert (price.prompt_per_million, price.completion_per_million) == pytest.approx((0.225, 0.9))
    assert report.exit_code == 0 and charged > 0
    assert est.expected_cost == pytest.approx(charged, rel=0.15)
    paid = pl.read_parquet(job.output.path)["cost"].sum()  # the pilot's rows are reused, not paid twice
    assert paid == pytest.approx(charged, rel=0.01)  # each call's own rounding to quota units aside


async def test_the_keys_quota_is_the_balance_and_reservations_are_warned_of(tmp_path: Path) -> None:
    """The key's own quota (/api/usage/token/) caps the user's balance; when the calls in flight
    reserve (prompt + max_tokens) × price beyond it, the estimate warns."""
    with Sandbox(new_api(key_quota_usd=0.0002)).running() as sb:
        job = relay_job(questions(tmp_path / "q.csv", 20), tmp_path / "out.parquet", sb.relay_url, concurrency=16)
        provider = provider_for(job, KEY, sb.relay_url)
        try:
            account = await provider.account()
            est = await estimate(job, provider)
        finally:
            await provider.aclose()
    assert account.remaining == pytest.approx(100 / QUOTA_PER_USD)  # 0.0002 USD is 100 quota units
    assert any("reserves prompt + max_tokens" in w for w in est.warnings)


async def test_the_relays_request_id_is_kept_on_every_row(tmp_path: Path) -> None:
    """Answers and failed rows alike carry the id the relay logged (its X-Oneapi-Request-Id)."""
    faults = FaultConfig(context_window=0.2, max_faults_per_prompt=1)
    with Sandbox(new_api(faults=faults, seed=5)).running() as sb:
        job = relay_job(questions(tmp_path / "q.csv", 40), tmp_path / "out.parquet", sb.relay_url, concurrency=4)
        await run(job, KEY, sb.relay_url, backoff=FAST)
        logged = {r["request_id"] for r in posts(sb.records())}
    out = pl.read_parquet(job.output.path)
    failed = out.filter(pl.col("status") == "error")
    assert failed.height > 0 and out.filter(pl.col("status") == "ok").height > 0
    assert out["request_id"].null_count() == 0
    assert set(out["request_id"].to_list()) <= logged


# -- the sandbox speaks as the relays' source does -----------------------------------------------------------
def test_the_sandbox_sends_the_relays_own_texts_codes_and_ids() -> None:
    """Texts as new-api's middleware/model-rate-limit.go, model/token.go and one-api's
    middleware/distributor.go write them; the id in the header is the one the message ends with."""
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
    auth = {"Authorization": f"Bearer {KEY}"}
    # the sandbox's first answer loads its tokenizer: slow on a busy machine
    with Client(timeout=60.0) as http:
        with Sandbox(new_api(rate_limit_success=1)).running() as sb:
            url = f"{sb.relay_url}/v1/chat/completions"
            ok = http.post(url, json=chat, headers=auth)
            limited = http.post(url, json=chat, headers=auth)
        with Sandbox(new_api(key_quota_usd=0.0)).running() as sb:
            spent = http.post(f"{sb.relay_url}/v1/chat/completions", json=chat, headers=auth)
            usage = http.get(f"{sb.relay_url}/api/usage/token/", headers=auth).json()["data"]
        with Sandbox(new_api(flavour="one-api", no_channel_models=["gpt-4o"])).running() as sb:
            none = http.post(f"{sb.relay_url}/v1/chat/completions", json={**chat, "model": "gpt-4o"}, headers=auth)
    assert ok.status_code == 200 and ok.headers["X-Oneapi-Request-Id"]
    error = limited.json()["error"]
    rid = limited.headers["X-Oneapi-Request-Id"]
    assert limited.status_code == 429 and error["code"] == "" and "Retry-After" not in limited.headers
    assert error["message"] == f"您已达到请求数限制：1分钟内最多请求1次 (request id: {rid})"
    assert not any(h.lower().startswith("x-ratelimit") for h in limited.headers)
    assert spent.status_code == 401 and spent.json()["error"]["message"].startswith("[sk-sa***ay] 该令牌额度已用尽")
    assert usage["total_available"] == 0 and usage["unlimited_quota"] is False
    assert none.status_code == 503 and none.json()["error"] == {
        "message": f"当前分组 default 下对于模型 gpt-4o 无可用渠道 (request id: {none.headers['X-Oneapi-Request-Id']})",
        "type": "one_api_error"}
