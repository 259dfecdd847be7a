"""The run report: jobs run against the sandbox over HTTP, then their report built and opened in Chromium."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import anyio
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline import ConfigError, Job, RunReport
from pipeline.config import OutputConfig
from pipeline.report import _charts, default_report_path, load_run, write_report
from pipeline.report import _data as d
from pipeline.result import RESULT_SCHEMA
from pipeline.sandbox import FaultConfig, Sandbox, SandboxConfig

from .browser import Chromium, find_chromium
from .helpers import ROOT, calls, cli, momo_job, posts, questions, run, write_job_toml

RATE_LIMIT = 12_000  # requests per minute the fault job allows itself: the chart draws this line
PLAIN_CHARTS = ["rate", "latency", "cost-time", "per-row", "outcomes", "retries"]
LABEL_CHARTS = [*PLAIN_CHARTS, "labels", "agreement"]
CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="!!! NOT CHECKED IN A BROWSER: Chromium is missing and `make test` could not install it "
           "(it needs apt-get as root: `apt-get install chromium`, or set CHROMIUM=/path/to/chrome)",
)


@dataclass
class Done:
    """A finished job: its output, its report and the run's own account of itself."""

    output: Path
    page: Path
    report: RunReport


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Done:
    """80 questions (one blank) through 429s and 5xx; at most 2 attempts, so some rows fail (by 5xx:
    a 429 uses no attempt)."""
    tmp = tmp_path_factory.mktemp("faulty")
    faults = FaultConfig(rate_limit=0.15, server_error=0.2, max_faults_per_prompt=3)
    data = questions(tmp / "q.csv", 80, blank=[5])
    # the sandbox's window sets its Retry-After (window / 60): scaled down, 429s cost milliseconds
    with Sandbox(SandboxConfig(faults=faults, window_seconds=0.6, seed=3)).running() as sb:
        job = momo_job(data, tmp / "out.parquet", sb.momo_url, max_attempts=2,
                       requests_per_minute=RATE_LIMIT)
        report = anyio.run(lambda: run(job, "momo-sandbox-enterprise", sb.momo_url, backoff=(0.001, 0.01)))
    return Done(job.output.path, write_report(job.output.path), report)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Done:
    """40 reviews through the sandbox's labelling agent, three votes each."""
    tmp = tmp_path_factory.mktemp("labelled")
    job = Job.load(ROOT / "jobs/label-sentiment.toml").with_overrides(output=OutputConfig(path=tmp / "l.parquet"))
    with Sandbox(SandboxConfig()).running() as sb:
        report = anyio.run(lambda: run(job, "momo-sandbox-enterprise", sb.momo_url, limit=40))
    return Done(job.output.path, write_report(job.output.path), report)


def figures(html: str) -> dict[str, str]:
    """Each ``<figure id=...>`` of the page and its markup."""
    return dict(re.findall(r'<figure id="([^"]+)".*?>(.*?)</figure>', html, flags=re.S))


def svg_text(markup: str) -> list[str]:
    return [t.strip() for t in re.findall(r"<text[^>]*>([^<]*)</text>", markup)]


# -- what the page says ------------------------------------------------------------------------
def test_report_of_a_run_with_faults_charts_errors_retries_and_the_limit(faulty: Done) -> None:
    html = faulty.page.read_text(encoding="utf-8")
    out = pl.read_parquet(faulty.output)
    assert faulty.page == faulty.output.with_name("out.report.html")
    charts = figures(html)
    assert list(charts) == PLAIN_CHARTS
    assert all("<svg" in markup for markup in charts.values())
    assert "tier limit 12,000/min" in svg_text(charts["rate"])
    codes = set(out["error_code"].drop_nulls())
    assert {"EMPTY_PROMPT"} < codes  # the blank row, and rows whose 2 attempts both failed
    outcome_labels = svg_text(charts["outcomes"])
    for status, code in out.select("status", "error_code").unique().iter_rows():
        assert (f"{status}: {code}" if code else status) in outcome_labels
    stats = faulty.report.stats
    assert stats.rate_limited > 0 and stats.retries > 0 and stats.error > 0
    caption = re.search(r"<figcaption>(.*?)</figcaption>", charts["retries"], flags=re.S)
    assert caption and f"counted {stats.retries:,} retries and {stats.rate_limited:,} answers 429" in caption.group(1)


def test_report_shows_the_provenance_and_the_run_summary(faulty: Done) -> None:
    html = faulty.page.read_text(encoding="utf-8")
    meta = {k.decode(): v.decode() for k, v in pq.read_metadata(faulty.output).metadata.items()}
    provenance = html[html.index('id="provenance"'):]
    for key in ("momo_batch.version", "momo_batch.job_sha256", "momo_batch.provider", "momo_batch.target",
                "momo_batch.cost_source"):
        assert f"<th>{key}</th><td class=\"v\">{meta[key]}</td>" in provenance
    summary = html[html.index('id="summary"'):html.index('id="provenance"')]
    totals = json.loads(meta["momo_batch.totals"])
    assert totals["calls"] == faulty.report.stats.calls
    for key in ("calls", "retries", "rate_limited"):
        assert f"<th>{key}</th><td class=\"v\">{totals[key]}</td>" in summary
    assert f"<th>job_totals.error</th><td class=\"v\">{totals['job_totals']['error']}</td>" in summary


def test_page_loads_nothing_from_outside(faulty: Done) -> None:
    html = faulty.page.read_text(encoding="utf-8")
    assert "<script" not in html and "<link" not in html and "@import" not in html
    assert re.search(r"""\bhref\s*=\s*["']#""", html)  # in-page references (#id) are there ...
    assert not re.search(r"""\b(src|href)\s*=\s*(?!["']#)""", html)  # ... and nothing else
    assert not re.search(r"url\((?!#)", html)
    assert "default-src 'none'" in html  # and the browser refuses any fetch that slipped in


def test_per_row_counts_add_up_to_what_the_run_counted(faulty: Done) -> None:
    loaded = load_run(faulty.output)
    stats = faulty.report.stats
    assert len(d.request_times(loaded)) == stats.calls
    assert int(d.retries_per_row(loaded).sum()) == stats.retries
    bins, per_minute = d.requests_per_minute(loaded)
    assert round(float((per_minute * bins.widths / 60).sum())) == stats.calls
    assert d.cumulative(loaded, "tokens_used")[1][-1] == stats.tokens


def test_label_report_shows_the_distribution_and_agreement(labelled: Done) -> None:
    html = labelled.page.read_text(encoding="utf-8")
    out = pl.read_parquet(labelled.output)
    charts = figures(html)
    assert list(charts) == LABEL_CHARTS
    names = svg_text(charts["labels"])
    for label, n in out.filter(pl.col("status") == "ok")["label"].value_counts().iter_rows():
        assert label in names
        assert f"{n:,} ({n / out.height:.0%})" in names
    shares = {f"{v:.0%}" for v in out["label_agreement"].drop_nulls().round(2).unique()}
    assert shares <= set(svg_text(charts["agreement"]))


# -- in a real browser -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    if CHROMIUM is None:  # only under CI=true, where a missing browser is a broken install step
        pytest.fail("Chromium is missing: `make test` installs Debian's chromium when it can")
    with Chromium(CHROMIUM) as b:
        yield b


PALETTE = [f"rgb({int(c[1:3], 16)}, {int(c[3:5], 16)}, {int(c[5:7], 16)})"
           for c in (_charts.BLUE, _charts.RED, _charts.GREEN, _charts.AMBER, _charts.GREY, _charts.PURPLE)]
DRAWN = """JSON.stringify([...document.querySelectorAll("figure")].map(f => {
  const svg = f.querySelector("svg.chart"), box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  const shown = el => { const b = el.getBBox(); return b.width > 0 || b.height > 0; };
  const data = p => { const s = getComputedStyle(p); return PALETTE.includes(s.fill) || PALETTE.includes(s.stroke); };
  return {id: f.id, width: box.width, height: box.height,
          texts: svg ? [...svg.querySelectorAll("text")].filter(shown).length : 0,
          data: svg ? [...svg.querySelectorAll("path")].filter(p => shown(p) && data(p)).length : 0};
}))""".replace("PALETTE", json.dumps(PALETTE))


@needs_chromium
@pytest.mark.parametrize("job", ["faulty", "labelled"])
def test_report_renders_in_headless_chromium(job: str, request: pytest.FixtureRequest, browser: Chromium) -> None:
    done: Done = request.getfixturevalue(job)
    load = browser.open(done.page)
    assert load.console == [] and load.log == []
    assert load.requests == [done.page.resolve().as_uri()]  # the page itself, nothing else
    drawn = json.loads(browser.evaluate(DRAWN))
    assert [f["id"] for f in drawn] == (LABEL_CHARTS if job == "labelled" else PLAIN_CHARTS)
    for f in drawn:
        assert f["width"] > 300 and f["height"] > 100, f
        assert f["texts"] >= 6 and f["data"] >= 1, f  # tick labels, and bars or lines in the data's colours
    assert browser.evaluate("document.title") == f"momo-batch report: {done.output.name}"


@needs_chromium
def test_the_browser_check_sees_errors_and_fetches(tmp_path: Path, browser: Chromium) -> None:
    """The check above is not vacuous: a script error, a console error and a remote image all show."""
    page = tmp_path / "bad.html"
    page.write_text('<!doctype html><img src="https://cdn.invalid/x.png">'
                    '<script>console.error("boom"); missing();</script>')
    load = browser.open(page)
    assert "boom" in load.console and len(load.console) == 2
    assert "https://cdn.invalid/x.png" in load.requests and load.log


# -- the commands ------------------------------------------------------------------------------
def test_report_command_writes_the_page_and_prints_its_path(faulty: Done, tmp_path: Path) -> None:
    target = tmp_path / "pages" / "r.html"
    proc = cli("report", str(faulty.output), "-o", str(target))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(target)
    assert target.read_text(encoding="utf-8") == faulty.page.read_text(encoding="utf-8")  # same data, same page


@pytest.mark.parametrize("content", ["not parquet", "parquet without result columns"])
def test_report_of_a_file_that_is_not_an_output_is_one_line_exit_2(tmp_path: Path, content: str) -> None:
    path = tmp_path / "x.parquet"
    if content == "not parquet":
        path.write_text("id,question\n1,hi\n")
    else:
        pl.DataFrame({"id": [1], "question": ["hi"]}).write_parquet(path)
    with pytest.raises(ConfigError, match="x.parquet"):
        write_report(path)
    proc = cli("report", str(path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [proc.stderr.strip()]
    assert not default_report_path(path).exists()


def test_report_into_a_folder_or_an_unwritable_place(faulty: Done, tmp_path: Path) -> None:
    assert write_report(faulty.output, tmp_path) == tmp_path / "out.report.html"
    with pytest.raises(ConfigError, match="cannot write the report"):
        write_report(faulty.output, Path("/proc/no-such-dir/r.html"))


def test_run_with_report_writes_it_beside_the_output(tmp_path: Path) -> None:
    data = questions(tmp_path / "q.csv", 12)
    out = tmp_path / "out" / "answers.parquet"
    job = write_job_toml(tmp_path / "job.toml", {
        "input": {"path": data, "id_column": "id"},
        "prompt": {"template": "{question}"},
        "provider": {"kind": "momo", "agent_id": 159, "max_tokens": 300},
        "limits": {"tier": "enterprise"},
        "output": {"path": out},
    })
    proc = cli("run", str(job), "--sandbox", "--report", "--json", "-q")
    assert proc.returncode == 0, proc.stderr
    page = Path(json.loads(proc.stdout)["report"])
    assert page == out.with_name("answers.report.html") and page.is_file()
    again = cli("run", str(job), "--sandbox", "--report", "-q")  # resumed: nothing to call, report again
    assert again.returncode == 0, again.stderr
    assert f"report: {page}" in again.stdout
    assert list(figures(page.read_text(encoding="utf-8"))) == PLAIN_CHARTS


# -- size and time bins ------------------------------------------------------------------------
def synthetic_output(path: Path, n: int) -> Path:
    """An output-shaped Parquet of ``n`` rows over an hour (no API involved: only the page's size)."""
    rng = np.random.default_rng(1)
    latency = rng.gamma(2.0, 400.0, n)
    start = pl.datetime(2026, 1, 1, time_zone="UTC")
    frame = pl.DataFrame({
        "status": rng.choice(["ok", "ok", "ok", "error"], n), "attempts": rng.integers(1, 4, n).astype(np.int32),
        "latency_ms": latency, "cost": rng.random(n) / 1000, "tokens_used": rng.integers(20, 400, n),
        "offset_us": np.sort(rng.integers(0, 3_600_000_000, n)),
    }).with_columns(
        error_code=pl.when(pl.col("status") == "error").then(pl.lit("SERVER_ERROR")),
        finished_at=start + pl.duration(microseconds=pl.col("offset_us")),
    ).drop("offset_us")
    frame.write_parquet(path)
    return path


def test_page_size_does_not_grow_with_rows(tmp_path: Path) -> None:
    small = write_report(synthetic_output(tmp_path / "small.parquet", 2_000)).stat().st_size
    large = write_report(synthetic_output(tmp_path / "large.parquet", 100_000)).stat().st_size
    assert large < 1.2 * small and large < 400_000, (small, large)


@pytest.mark.parametrize("rows", [0, 3])
def test_report_of_an_output_without_calls_says_so(tmp_path: Path, rows: int) -> None:
    """An empty output, or one of blank prompts only (skipped): every chart is there, saying so."""
    when = datetime(2026, 1, 1, tzinfo=UTC)
    frame = pl.DataFrame({"id": list(range(rows)), "status": ["skipped"] * rows,
                          "error_code": ["EMPTY_PROMPT"] * rows, "attempts": [0] * rows,
                          "finished_at": [when] * rows},
                         schema_overrides={"id": pl.Int64, "attempts": pl.Int32(),
                                           "finished_at": pl.Datetime("us", "UTC")})
    missing = [pl.lit(None, dtype=t).alias(c) for c, t in RESULT_SCHEMA.items() if c not in frame.columns]
    frame = frame.with_columns(missing)
    frame.write_parquet(tmp_path / "empty.parquet")
    charts = figures(write_report(tmp_path / "empty.parquet").read_text(encoding="utf-8"))
    assert list(charts) == PLAIN_CHARTS
    for key in ("rate", "cost-time", "retries"):
        assert "no calls" in svg_text(charts[key])
    assert ("skipped: EMPTY_PROMPT" in svg_text(charts["outcomes"])) == (rows > 0)


@given(st.floats(min_value=1e-3, max_value=30 * 86400), st.integers(min_value=1, max_value=60))
def test_time_bins_cover_the_run_with_round_widths(span: float, bins: int) -> None:
    edges = d.time_bins(span, bins).edges
    widths = np.diff(edges)
    assert edges[0] == 0 and edges[-1] == pytest.approx(max(span, widths[0] * 1e-3))
    assert (widths > 0).all() and np.allclose(widths[:-1], widths[0])
    assert len(widths) <= max(bins, 1) + 1
    assert widths[-1] >= widths[0] / 2 or len(widths) == 1  # no sliver at the end to spike a rate


# -- one set of numbers, and a reader's summary ----------------------------------------------------
def test_calls_tokens_and_cost_are_what_the_server_counted_with_repeated_prompts(tmp_path: Path) -> None:
    """Rows sharing a request show it once: the report's tiles, its summary and ``eval``'s way of
    counting agree with the sandbox's own log (it once said 974 calls for 440)."""
    prompts = [f"Question {i % 7}: what is {i % 7} squared?" for i in range(28)]  # 7 requests, 4 rows each
    data = tmp_path / "q.csv"
    pl.DataFrame({"id": [f"r{i}" for i in range(28)], "question": prompts}).write_csv(data)
    with Sandbox(SandboxConfig()).running() as sb:
        job = momo_job(data, tmp_path / "out.parquet", sb.momo_url)
        anyio.run(lambda: run(job, "momo-sandbox-enterprise", sb.momo_url))
        served = [r for r in calls(sb.records()) if r["charged"]]
        assert len(posts(sb.records())) == len(served)  # no call refused: each one answered and charged
    loaded = load_run(job.output.path)
    assert int(loaded.rows["calls"].sum()) == len(served) == 7
    assert int(loaded.rows["tokens_used"].sum()) == sum(r["tokens_used"] for r in served)
    assert float(loaded.rows["cost"].sum()) == pytest.approx(sum(r["cost"] for r in served), abs=1e-9)
    html = write_report(job.output.path).read_text(encoding="utf-8")
    cards = dict(re.findall(r'<div class="k">([^<]+)</div><div class="v">([^<]+)</div>', html))
    assert cards["calls"] == "7" and cards["tokens"] == f"{sum(r['tokens_used'] for r in served):,}"
    # agent 159's calls come out of the demo key's prepaid package: a cost of 0 that says why
    assert sum(r["cost"] for r in served) == 0 and sum(r["package_tokens"] for r in served) > 0
    assert cards["cost"] == "0 CNY" and "0: prepaid tokens covered the calls" in html  # the unit, recorded by the run
    summary = html[html.index('id="summary"'):html.index('id="provenance"')]
    assert "<h3>The whole job: every row of this file</h3>" in summary
    assert "<th>rows answered without a call</th><td class=\"v\">21 duplicate, 0 from the cache</td>" in summary
    assert "<th>exit code</th><td class=\"v\">0 — every row finished ok" in summary
    assert "<details><summary>Every value the run recorded" in summary


def test_a_gold_column_gets_the_accuracy_eval_gives(tmp_path: Path) -> None:
    from pipeline import evaluate

    job = Job.load(ROOT / "jobs/label-gold.toml").with_overrides(output=OutputConfig(path=tmp_path / "g.parquet"))
    with Sandbox(SandboxConfig(label_truth=ROOT / "data" / "reviews-gold.csv")).running() as sb:
        anyio.run(lambda: run(job, "momo-sandbox-enterprise", sb.momo_url, limit=30))
    ev = evaluate(job.output.path, "gold")
    html = write_report(job.output.path).read_text(encoding="utf-8")
    cards = dict(re.findall(r'<div class="k">([^<]+)</div><div class="v">([^<]+)</div>', html))
    assert cards["accuracy"] == f"{ev.accuracy:.1%}" and ev.rows == 30
    assert f"{ev.correct:,} of 30 against gold" in html
    out = pl.read_parquet(job.output.path)
    assert ev.correct == int((out["label"] == out["gold"]).sum())  # by hand, not by evaluate


NARROW_VIEW = """JSON.stringify({
  page: document.documentElement.scrollWidth,
  smallest: Math.min(...[...document.querySelectorAll("svg.chart text")]
      .filter(t => t.getBBox().height > 0 && t.textContent.trim())
      .map(t => { const m = t.getScreenCTM();
                  return parseFloat(getComputedStyle(t).fontSize) * Math.hypot(m.a, m.b); })),
  cards: Math.max(...[...document.querySelectorAll(".card")].map(c => c.getBoundingClientRect().right)),
})"""


@needs_chromium
def test_the_report_reads_on_a_phone_420_px_wide(faulty: Done) -> None:
    if CHROMIUM is None:
        pytest.fail("Chromium is missing: `make test` installs Debian's chromium when it can")
    with Chromium(CHROMIUM, width=420, height=900) as phone:
        load = phone.open(faulty.page)
        seen = json.loads(phone.evaluate(NARROW_VIEW))
    assert load.console == [] and load.log == []
    assert seen["page"] <= 420 and seen["cards"] <= 420, seen  # the page itself never scrolls sideways
    assert seen["smallest"] >= 9, seen  # chart text in CSS px as drawn: charts scroll in their box instead
