"""Process-wide collector tuning: set by the CLI around its run, never by a library call."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

from pipeline import _tuning

from .helpers import momo_job, questions, run

ROOT = Path(__file__).resolve().parents[1]


def test_run_job_leaves_the_collector_as_it_found_it(tmp_path: Path, sandbox: object) -> None:
    """``gc.freeze`` and the collector's thresholds are the whole process's: a notebook calling
    the library keeps its own. Seen from inside the run (each result) and after it."""
    import anyio

    before = (gc.get_threshold(), gc.get_freeze_count(), gc.isenabled())
    during = []
    job = momo_job(questions(tmp_path / "q.csv", 4), tmp_path / "out.parquet", sandbox.momo_url)  # type: ignore[attr-defined]

    def seen(_: object) -> None:
        during.append((gc.get_threshold(), gc.get_freeze_count(), gc.isenabled()))

    report = anyio.run(lambda: run(job, "momo-sandbox-enterprise", sandbox.momo_url,  # type: ignore[attr-defined]
                                   on_result=seen))
    assert report.exit_code == 0 and len(during) == 4
    assert set(during) == {before}
    assert (gc.get_threshold(), gc.get_freeze_count(), gc.isenabled()) == before


def test_steady_gc_freezes_and_raises_the_threshold_then_restores_both() -> None:
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    with _tuning.steady_gc():
        assert gc.get_threshold() == (_tuning.GC_YOUNG, *before[1:])
        assert gc.get_freeze_count() > frozen
    assert gc.get_threshold() == before and gc.get_freeze_count() == frozen


CLI_WATCHED = """
import gc, json, sys
import pipeline.cli, pipeline.cli_run
own = pipeline.cli_run.run_job
async def watched(*args, **kw):
    print(json.dumps({"during": [gc.get_threshold()[0], gc.get_freeze_count()]}), file=sys.stderr)
    return await own(*args, **kw)
pipeline.cli_run.run_job = watched
sys.argv = ["momo-batch", *sys.argv[1:]]
try:
    pipeline.cli.main()
except SystemExit as done:
    print(json.dumps({"after": [gc.get_threshold()[0], gc.get_freeze_count()], "code": done.code}),
          file=sys.stderr)
"""


def test_the_cli_run_sets_the_collector_for_its_run(tmp_path: Path) -> None:
    out = tmp_path / "q.parquet"
    proc = subprocess.run([sys.executable, "-c", CLI_WATCHED, "run", "jobs/example.toml", "--sandbox", "--limit",
                           "3", "--output", str(out), "--json", "--quiet"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    during = next(line["during"] for line in lines if "during" in line)
    after = next(line for line in lines if "after" in line)
    assert after["code"] == 0, proc.stderr
    assert during[0] == _tuning.GC_YOUNG and during[1] > 0
    assert after["after"] == [gc.get_threshold()[0], 0]  # a fresh interpreter's defaults, back
