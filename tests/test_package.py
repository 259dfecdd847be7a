"""The package front: every public name loads, and the CLI starts without the run machinery."""

from __future__ import annotations

import subprocess
import sys

import pipeline


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
