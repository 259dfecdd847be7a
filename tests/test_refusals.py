"""Nothing is paid before the job is known good, and every refusal is one line with its exit code:
bad input, bad output paths, loose job files, bad keys, exports, a full disk."""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline.ledger import ledger_dir
from pipeline.sandbox import Sandbox

from . import helpers
from .helpers import posts, questions, write_job_toml

KEY = "momo-sandbox-enterprise"
cli = functools.partial(helpers.cli, key=KEY)


def job_file(tmp: Path, data: Path, out: Path, url: str, **changes: dict[str, Any]) -> Path:
    tables: dict[str, dict[str, Any]] = {
        "input": {"path": data, "id_column": "id"},
        "prompt": {"template": "{question}"},
        "provider": {"kind": "momo", "base_url": url, "agent_id": 159, "max_tokens": 200},
        "limits": {"tier": "enterprise", "concurrency": 4},
        "output": {"path": out},
    }
    for name, table in changes.items():
        tables[name] = {**tables[name], **table}
    return write_job_toml(tmp / "job.toml", tables)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_nothing_paid(sandbox: Sandbox, out: Path) -> None:
    assert not posts(sandbox.records())
    assert not ledger_dir(out).exists()  # a refused start leaves nothing behind


# -- the input ---------------------------------------------------------------------------------------
def test_a_ragged_csv_is_refused_before_any_call(tmp_path: Path, sandbox: Sandbox) -> None:
    data = tmp_path / "in.csv"
    data.write_text("id,question\nq1,what is 1?\nq2,what is 2?,an extra field\nq3,what is 3?\n")
    out = tmp_path / "out.parquet"
    for command in ("run", "estimate"):
        proc = cli(command, str(job_file(tmp_path, data, out, sandbox.momo_url)))
        line = one_line_error(proc)
        assert proc.returncode == 2 and "in.csv" in line and "line 3" in line
    assert_nothing_paid(sandbox, out)


def test_a_job_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_bytes('[input]\npath = "données.csv"\n'.encode("latin-1"))
    proc = cli("run", str(path))
    assert "UTF-8" in one_line_error(proc) and proc.returncode == 2


@pytest.mark.parametrize("key", ["momo-sandbox-enterprise\n", "momo-sandbox-\nenterprise", "momo-sändbox-key"])
def test_a_key_with_a_line_break_or_non_ascii(tmp_path: Path, sandbox: Sandbox, key: str) -> None:
    out = tmp_path / "out.parquet"
    job = job_file(tmp_path, questions(tmp_path / "q.csv", 3), out, sandbox.momo_url)
    proc = cli("run", str(job), key=key)
    line = one_line_error(proc)
    assert proc.returncode == 2 and "MOMO_API_KEY" in line
    assert "sandbox" not in line and "enterprise" not in line  # the key is never echoed
    assert_nothing_paid(sandbox, out)


# -- the output path ---------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["a directory", "under /proc", "under a regular file", "the input csv",
                                  "an export that is the input", "the input parquet"])
def test_an_output_path_that_cannot_work_is_refused_before_any_call(tmp_path: Path, sandbox: Sandbox,
                                                                    case: str) -> None:
    data = questions(tmp_path / "in.csv", 3)
    if case == "the input parquet":
        data = tmp_path / "in.parquet"
        pl.read_csv(tmp_path / "in.csv").write_parquet(data)
    (tmp_path / "notes.txt").write_text("a regular file")
    (tmp_path / "outdir").mkdir()
    out, extra = {
        "a directory": (tmp_path / "outdir", []),
        "under /proc": (Path("/proc/momo-batch-test/out.parquet"), []),
        "under a regular file": (tmp_path / "notes.txt" / "out.parquet", []),
        "the input csv": (tmp_path / "in.csv", []),
        "an export that is the input": (tmp_path / "in.parquet", ["--format", "csv"]),
        "the input parquet": (data, []),
    }[case]
    before = digest(data)
    proc = cli("run", str(job_file(tmp_path, data, tmp_path / "o.parquet", sandbox.momo_url)),
               "--output", str(out), *extra)
    line = one_line_error(proc)
    assert proc.returncode == 2, line
    assert str(out) in line or str(out.parent) in line
    assert digest(data) == before  # the input is never overwritten
    assert not posts(sandbox.records())
    if case != "under /proc":
        assert not ledger_dir(out).exists()


# -- strict job files --------------------------------------------------------------------------------
@pytest.mark.parametrize(("table", "values", "named"), [
    ("limits", {"concurrency": "16"}, "limits.concurrency"),
    ("provider", {"stream": "yes"}, "provider.stream"),
    ("provider", {"max_tokens": "200"}, "provider.max_tokens"),
])
def test_a_string_where_a_number_or_boolean_belongs(tmp_path: Path, table: str, values: dict[str, Any],
                                                   named: str) -> None:
    job = job_file(tmp_path, questions(tmp_path / "q.csv", 2), tmp_path / "o.parquet", "http://127.0.0.1:9",
                   **{table: values})
    proc = cli("run", str(job))
    line = one_line_error(proc)
    assert proc.returncode == 2 and named in line and repr(next(iter(values.values()))) in line


# -- exports -----------------------------------------------------------------------------------------
def test_csv_export_of_nested_columns_is_json_text(tmp_path: Path, sandbox: Sandbox) -> None:
    data = tmp_path / "in.parquet"
    pl.DataFrame({
        "id": ["a", "b"], "question": ["what is 1?", "what is 2?"],
        "scores": [[1, 2], None], "meta": [{"lang": "en", "n": 1}, {"lang": "zh", "n": None}],
        "tags": [["x", "y"], []],
    }).write_parquet(data)
    out = tmp_path / "out.parquet"
    proc = cli("run", str(job_file(tmp_path, data, out, sandbox.momo_url)), "--format", "csv", "--quiet")
    assert proc.returncode == 0, proc.stderr
    table = pl.read_csv(out.with_suffix(".csv"))
    assert [json.loads(v) if v else None for v in table["scores"]] == [[1, 2], None]
    assert [json.loads(v) for v in table["meta"]] == [{"lang": "en", "n": 1}, {"lang": "zh", "n": None}]
    assert table["tags"].to_list() == ["x|y", None] or table["tags"].to_list() == ["x|y", ""]


# -- a full disk -------------------------------------------------------------------------------------
def test_a_full_disk_while_writing_the_output_is_one_line_and_resumable(tmp_path: Path, sandbox: Sandbox) -> None:
    out = tmp_path / "out.parquet"
    job = job_file(tmp_path, questions(tmp_path / "q.csv", 5), out, sandbox.momo_url)
    # finalise writes through ".out.parquet.tmp": pointing it at /dev/full makes every write fail
    # with ENOSPC, as a full disk does
    (tmp_path / ".out.parquet.tmp").symlink_to("/dev/full")
    proc = cli("run", str(job), "--quiet")
    line = one_line_error(proc)
    assert proc.returncode == 9 and "No space left on device" in line and "ledger" in line
    assert not out.exists() and not (tmp_path / ".out.parquet.tmp").exists()
    paid = len(posts(sandbox.records()))
    again = cli("run", str(job), "--quiet")
    assert again.returncode == 0, again.stderr
    assert pl.read_parquet(out).height == 5 and len(posts(sandbox.records())) == paid  # nothing paid twice
