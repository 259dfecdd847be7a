"""The package front: every public name loads, and the CLI starts without the run machinery."""

from __future__ import annotations

import os
import subprocess
import sys

import pipeline
from pipeline._memory import SETTINGS


def test_every_public_name_resolves_and_each_is_listed_once() -> None:
    assert sorted(pipeline.__all__) == sorted(pipeline._EXPORTS)
    for name in pipeline.__all__:
        assert getattr(pipeline, name) is not None, name


def test_the_cli_module_loads_no_polars_pyarrow_or_httpx() -> None:
    code = "import sys, pipeline.cli; print(sorted(m for m in ('polars', 'pyarrow', 'httpx') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_public_function_is_not_shadowed_by_a_submodule_of_its_name() -> None:
    import pipeline.job  # noqa: F401  (loads the estimator module too)

    assert callable(pipeline.estimate) and callable(pipeline.evaluate) and callable(pipeline.run_job)


def test_the_cli_sets_the_allocators_before_polars_loads_and_a_late_call_changes_nothing() -> None:
    code = ("import os, sys, pipeline.cli; sys.argv = ['momo-batch', '--help']\n"
            "try: pipeline.cli.main()\nexcept SystemExit: pass\n"
            "print(os.environ['_RJEM_MALLOC_CONF'], os.environ['ARROW_DEFAULT_MEMORY_POOL'])")
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split()[-2:] == [SETTINGS["_RJEM_MALLOC_CONF"], SETTINGS["ARROW_DEFAULT_MEMORY_POOL"]]
    late = ("import os, polars; from pipeline._memory import tune_allocators\n"
            "print(tune_allocators(), os.environ.get('_RJEM_MALLOC_CONF'))")
    out = subprocess.run([sys.executable, "-c", late], capture_output=True, text=True, check=True, env=env)
    too_late, conf = out.stdout.split()
    assert too_late == "False" and conf != SETTINGS["_RJEM_MALLOC_CONF"]  # (polars sets a default of its own)
    mine = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**env, "ARROW_DEFAULT_MEMORY_POOL": "jemalloc"})
    assert mine.stdout.split()[-1] == "jemalloc"  # a setting of the user's own wins


def test_make_report_writes_no_tracked_file_and_make_screenshot_does() -> None:
    """`make report` leaves a clone's tree clean: only `make screenshot` rewrites docs/report.png."""
    from .helpers import ROOT

    def commands(target: str) -> list[str]:
        listed = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return [line for line in listed.splitlines() if "pip install" not in line]  # the venv's lines only read

    report = " ".join(commands("report")).split()
    assert "--report" in report and "docs/report.png" not in report
    assert "docs/report.png" in " ".join(commands("screenshot")).split()
    # what `make report` writes (the example job's output and its page) is ignored by git
    ignored = subprocess.run(["git", "check-ignore", "data/out/questions.parquet", "data/out/questions.report.html"],
                             cwd=ROOT, capture_output=True, text=True)
    assert ignored.returncode == 0 and len(ignored.stdout.split()) == 2
