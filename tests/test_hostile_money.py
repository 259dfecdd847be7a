"""Issue 23, money first: figures a server reports are checked before they count, and a cap given
to the library means what the CLI's does (0: nothing may be spent; NaN, negative: an error).

What was paid is read from the sandbox's own request log, never from the client's figures.
"""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import pytest

from pipeline import ConfigError
from pipeline.ledger import Ledger
from pipeline.sandbox import FaultConfig, KeyConfig, Sandbox, SandboxConfig

from .helpers import calls, cli, momo_job, questions, relay_job, run, write_job_toml

KEY = "momo-nopkg"  # no prepaid packages: every call costs money
RELAY_KEY = "sk-sandbox-relay"


def paid(records: list[dict[str, object]]) -> list[dict[str, object]]:
    return [r for r in calls(records) if r["charged"]]


def charged(records: list[dict[str, object]]) -> float:
    return sum(float(r["cost"]) for r in paid(records))  # type: ignore[arg-type]


def momo_sandbox(faults: FaultConfig | None = None, **cfg: object) -> Sandbox:
    keys = {KEY: KeyConfig(tier="enterprise", balance=100.0, packages={})}
    return Sandbox(SandboxConfig(seed=3, faults=faults or FaultConfig(), keys=keys, **cfg))  # type: ignore[arg-type]


# -- a cap of 0 -------------------------------------------------------------------------------------
@pytest.mark.parametrize("rows", [1, 200])
async def test_a_cap_of_zero_pays_for_nothing(tmp_path: Path, rows: int) -> None:
    with momo_sandbox().running() as sb:
        job = momo_job(questions(tmp_path / "q.csv", rows), tmp_path / "out.parquet", sb.momo_url)
        report = await run(job, KEY, sb.momo_url, max_cost=0.0, yes=True)
        records = sb.records()
    assert paid(records) == [] and calls(records) == []  # the server saw no call at all
    assert report.exit_code == 4 and report.stop_code == "BUDGET_EXCEEDED"
    assert report.stats.cost == 0


def test_cli_max_cost_zero_pays_for_nothing(tmp_path: Path) -> None:
    with momo_sandbox().running() as sb:
        job = write_job_toml(tmp_path / "job.toml", {
            "input": {"path": questions(tmp_path / "q.csv", 40), "id_column": "id"},
            "prompt": {"template": "{question}"},
            "provider": {"kind": "momo", "base_url": sb.momo_url, "agent_id": 159, "max_tokens": 300},
            "limits": {"tier": "enterprise"},
            "output": {"path": tmp_path / "out.parquet"},
        })
        done = cli("run", str(job), "--max-cost", "0", "--yes", key=KEY)
        records = sb.records()
    assert paid(records) == []
    assert done.returncode == 4, done.stderr


# -- caps, limits and prices given to the library --------------------------------------------------
@pytest.mark.parametrize("cap", [math.nan, -1.0, math.inf, "1"])
async def test_a_cap_that_is_not_an_amount_is_refused_naming_max_cost(tmp_path: Path, cap: object) -> None:
    with momo_sandbox().running() as sb:
        job = momo_job(questions(tmp_path / "q.csv", 5), tmp_path / "out.parquet", sb.momo_url)
        with pytest.raises(ConfigError, match="max_cost"):
            await run(job, KEY, sb.momo_url, max_cost=cap, yes=True)
        records = sb.records()
    assert calls(records) == []


@pytest.mark.parametrize("table, key, value", [
    ("limits", "max_cost", math.nan), ("limits", "max_cost", -1.0), ("limits", "max_cost", math.inf),
    ("provider", "prompt_price_per_million", math.nan), ("provider", "completion_price_per_million", -2.0),
])
def test_a_job_file_number_that_is_not_an_amount_is_refused(tmp_path: Path, table: str, key: str,
                                                             value: float) -> None:
    from pipeline import Job

    data = {
        "input": {"path": "q.csv"}, "prompt": {"template": "{q}"},
        "provider": {"kind": "openai", "model": "m", "prompt_price_per_million": 1.0,
                     "completion_price_per_million": 1.0},
        "output": {"path": "out.parquet"},
    }
    data.setdefault(table, {})[key] = value
    with pytest.raises(ConfigError, match=f"{table}.{key}"):
        Job.from_dict(data)


# -- figures a server reports ----------------------------------------------------------------------
async def test_negative_usage_from_a_relay_does_not_lift_the_cap(tmp_path: Path) -> None:
    """A relay that reports negative tokens once per prompt: each such answer is malformed (retried,
    its worst case counted), so the cap holds by the server's log and no cost is negative."""
    cap = 0.002
    faults = FaultConfig(negative_usage=0.5, max_faults_per_prompt=1)
    with Sandbox(SandboxConfig(seed=5, faults=faults)).running() as sb:
        job = relay_job(questions(tmp_path / "q.csv", 60), tmp_path / "out.parquet", sb.relay_url, concurrency=4)
        report = await run(job, RELAY_KEY, sb.relay_url, max_cost=cap, yes=True, backoff=(0.01, 0.02))
        records = sb.records()
    lied = [r for r in paid(records) if r["fault"] == "negative_usage"]
    assert lied  # the fault struck, after charging
    assert charged(records) <= cap + 1e-9  # the account, by the server's own log
    assert report.stop_code == "BUDGET_EXCEEDED"
    out = pl.read_parquet(tmp_path / "out.parquet")
    costs = out["cost"].drop_nulls()
    assert (costs >= 0).all() and (out["tokens_used"].drop_nulls() >= 0).all()
    assert report.stats.cost >= 0
    # each answer that lied was not believed: its row was asked again (or is still to do)
    assert all(code in (None, "BUDGET_EXCEEDED", "MALFORMED_RESPONSE") for code in out["error_code"])


@pytest.mark.parametrize("fault", ["negative_usage", "nan_usage"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_momo_figures_that_are_not_numbers_are_malformed_and_retried(tmp_path: Path, fault: str,
                                                                          stream: bool) -> None:
    """Every prompt's first answer lies (cost -x or NaN): each row is asked again and ends with the
    honest figures; the cost column adds up to what the server charged for the honest answers."""
    faults = FaultConfig(max_faults_per_prompt=1, **{fault: 1.0})
    with momo_sandbox(faults).running() as sb:
        job = momo_job(questions(tmp_path / "q.csv", 30), tmp_path / "out.parquet", sb.momo_url,
                       provider={"stream": stream})
        report = await run(job, KEY, sb.momo_url, backoff=(0.01, 0.02))
        records = sb.records()
    assert report.exit_code == 0, report.stop_message
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert out["status"].to_list() == ["ok"] * 30 and (out["attempts"] == 2).all()
    honest = sum(float(r["cost"]) for r in paid(records) if r["fault"] is None)  # type: ignore[arg-type]
    assert len(paid(records)) == 60  # each prompt charged twice: the lie, then the honest answer
    assert out["cost"].sum() == pytest.approx(honest)
    assert math.isfinite(report.stats.cost) and report.stats.cost == pytest.approx(honest)
    assert report.stats.unknown_outcomes == 30  # the lying answers: charged, amount not believed


async def test_nan_cost_under_a_cap_keeps_its_worst_case(tmp_path: Path) -> None:
    """With a cap, an answer whose cost is NaN counts at its worst case: the cap holds by the log."""
    cap = 0.01
    faults = FaultConfig(nan_usage=0.5, max_faults_per_prompt=1)
    with momo_sandbox(faults).running() as sb:
        job = momo_job(questions(tmp_path / "q.csv", 200), tmp_path / "out.parquet", sb.momo_url, concurrency=4)
        report = await run(job, KEY, sb.momo_url, max_cost=cap, yes=True, backoff=(0.01, 0.02))
        records = sb.records()
    assert [r for r in paid(records) if r["fault"] == "nan_usage"]
    assert charged(records) <= cap + 1e-9
    assert report.exit_code == 4 and math.isfinite(report.stats.cost)


def test_a_nan_left_in_the_journal_does_not_brick_the_ledger(tmp_path: Path) -> None:
    """A ledger a version that believed NaN wrote: its journal holds an outcome with cost NaN,
    which SQLite refused. It opens again; the call stays "sent" with its worst case held."""
    out = tmp_path / "out.parquet"
    with Ledger.open(out) as ledger, ledger.grouping():
        ledger.sent("k1", 0.25)
        with pytest.raises(Exception, match="cannot record"):
            ledger.outcome("k1", {"status": "ok", "cost": math.nan}, final=True, paid=math.nan, held=0.25)
    with Ledger.open(out) as ledger:  # raised WriteError "cannot open the ledger" before
        entry = ledger.get("k1")
        totals = ledger.totals()
    assert entry is not None and entry.state == 0  # sent, outcome unknown: the row runs again
    assert totals.spent == pytest.approx(0.25) and totals.unknown == 1


async def test_a_cache_answer_with_a_nan_cost_is_not_reused(tmp_path: Path) -> None:
    from pipeline.ledger import Cache

    with momo_sandbox().running() as sb:
        job = momo_job(questions(tmp_path / "q.csv", 3), tmp_path / "a.parquet", sb.momo_url)
        await run(job, KEY, sb.momo_url, cache=tmp_path / "cache")
        cache = Cache(tmp_path / "cache")
        keys = [k for (k,) in cache.db.execute("SELECT key FROM answers")]
        for key in keys:
            cache.put(key, {"response": "lie", "tokens_used": 10, "cost": math.nan})
        cache.close()
        job2 = momo_job(questions(tmp_path / "q.csv", 3), tmp_path / "b.parquet", sb.momo_url)
        report = await run(job2, KEY, sb.momo_url, cache=tmp_path / "cache")
        records = sb.records()
    assert report.stats.cached == 0 and len(paid(records)) == 6
    assert "lie" not in pl.read_parquet(tmp_path / "b.parquet")["response"].to_list()


@pytest.mark.parametrize("price", [math.nan, -0.5, math.inf])
async def test_a_relay_price_that_is_not_an_amount_is_refused_by_the_provider(price: float) -> None:
    from pipeline import OpenAIClient, OpenAIProvider

    async with OpenAIClient("sk-sandbox-relay", "http://127.0.0.1:9/v1") as client:
        with pytest.raises(ConfigError, match="OpenAIProvider: completion_price_per_million must be a finite"):
            OpenAIProvider(client, "gpt-4o-mini", prompt_price_per_million=1.0, completion_price_per_million=price)


@pytest.mark.parametrize("figures", [
    '"tokens_used": 1e400, "cost": 0.1', '"tokens_used": 10, "cost": -1.5', '"tokens_used": -5, "cost": 0.1',
    '"tokens_used": 10, "cost": NaN', '"tokens_used": 10, "cost": Infinity',
])
async def test_a_momo_answer_whose_figures_are_not_numbers_is_malformed(figures: str) -> None:
    """The client and the runner's check together: no figure that is not a finite number >= 0 gets
    through (``int(inf)`` was an OverflowError that escaped as a bug)."""
    import httpx

    from pipeline import MalformedResponse, MomoClient
    from pipeline.providers.base import check_reported

    body = '{"success": true, "data": {"id": "r1", "content": "hi", ' + figures + "}}"
    handler = lambda request: httpx.Response(200, content=body.encode(),  # noqa: E731
                                             headers={"content-type": "application/json"})
    async with MomoClient("momo-x", "http://momo.test/v1", transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(MalformedResponse):
            check_reported(await client.call(1, "hello"))


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "1e999"])
def test_rate_headers_that_are_not_finite_numbers_are_ignored(value: str) -> None:
    import httpx

    from pipeline.providers._transport import rate_limit_info, retry_after

    headers = httpx.Headers({"X-RateLimit-Limit": value, "X-RateLimit-Remaining": value,
                             "X-RateLimit-Reset": value, "Retry-After": value})
    assert rate_limit_info(headers) is None and retry_after(headers) is None
