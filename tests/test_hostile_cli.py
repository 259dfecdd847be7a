"""Issue 23: every failure of ``momo-batch`` is one line, at any moment, and never echoes a secret.

Disk errors while the preflight reads the ledger are exit 9; Ctrl-C at any instant, the imports
included, is exit 130 without a traceback; a bad input file is quoted by a short printable
excerpt at most; a key pasted where a key's name or a key goes is never shown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from pipeline.ledger import ledger_dir
from pipeline.sandbox import Sandbox

from .helpers import ROOT, posts, questions
from .test_refusals import cli, job_file, one_line_error

KEY = "momo-sandbox-enterprise"


# -- disk errors -------------------------------------------------------------------------------------
def test_a_disk_error_reading_the_ledger_in_the_preflight_is_exit_9(tmp_path: Path, sandbox: Sandbox) -> None:
    """A finished job run again when SQLite cannot make its shared-memory file (a full disk, an I/O
    error): one line naming the ledger, exit 9, nothing paid."""
    out = tmp_path / "out.parquet"
    job = job_file(tmp_path, questions(tmp_path / "q.csv", 4), out, sandbox.momo_url)
    assert cli("run", str(job), "--quiet").returncode == 0
    paid = len(posts(sandbox.records()))
    (ledger_dir(out) / "ledger.sqlite-shm").symlink_to("/dev/full")  # every write to it: ENOSPC
    proc = cli("run", str(job), "--quiet")
    line = one_line_error(proc)
    assert proc.returncode == 9 and "ledger" in line, line
    assert len(posts(sandbox.records())) == paid


# -- Ctrl-C ------------------------------------------------------------------------------------------
_INTERRUPT_ON_IMPORT = """
import sys

class _CtrlC:
    '''Ctrl-C while {module} is being imported: what a user pressing it in the first 0.2 s does.'''

    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            raise KeyboardInterrupt
        return None

sys.meta_path.insert(0, _CtrlC())
"""


@pytest.mark.parametrize("module", ["typer", "rich.console", "anyio", "pipeline.cli"])
def test_ctrl_c_during_the_imports_is_exit_130_without_a_traceback(tmp_path: Path, module: str) -> None:
    (tmp_path / "sitecustomize.py").write_text(_INTERRUPT_ON_IMPORT.format(module=module))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOMO_", "OPENAI_"))}
    env["PYTHONPATH"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.strip() == "error: interrupted"


# the interpreter is up and the command's entry point is loaded (runpy's and the interpreter's own
# start-up are not ours; ``test_ctrl_c_during_the_imports...`` covers the imports deterministically):
# then what ``momo-batch`` runs
_UP_THEN_RUN = ("import sys, pipeline.__main__ as command; sys.argv[0] = 'momo-batch'; "
                "sys.stderr.write('up\\n'); sys.stderr.flush(); command.entry()")


def test_ctrl_c_at_any_instant_is_exit_130_without_a_traceback(tmp_path: Path) -> None:
    """SIGINT at instants spread over the start of a run, from the imports to the first calls:
    each is at most one line, and exit 130."""
    from pipeline.sandbox import SandboxConfig

    with Sandbox(SandboxConfig(latency_ms=200)).running() as sb:
        job = job_file(tmp_path, questions(tmp_path / "q.csv", 40), tmp_path / "out.parquet", sb.momo_url)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MOMO_", "OPENAI_"))}
        env["MOMO_API_KEY"] = KEY
        for delay in (0.05, 0.1, 0.2, 0.4, 0.8, 1.5):
            proc = subprocess.Popen([sys.executable, "-c", _UP_THEN_RUN, "run", str(job), "--quiet", "--restart"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
            assert proc.stderr is not None and proc.stderr.readline() == "up\n"
            time.sleep(delay)  # the instant of the Ctrl-C, not a wait for something
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=60)
            assert "Traceback" not in stderr and len(stderr.strip().splitlines()) <= 1, (delay, stderr)
            assert proc.returncode == 130, (delay, proc.returncode, stderr)


# -- a bad file is quoted short ----------------------------------------------------------------------
def test_a_parquet_file_named_csv_is_one_short_line(tmp_path: Path, sandbox: Sandbox) -> None:
    data = tmp_path / "q.csv"
    pl.DataFrame({"id": [f"q{i}" for i in range(200)], "question": ["x" * 50] * 200}).write_parquet(data)
    out = tmp_path / "out.parquet"
    proc = cli("run", str(job_file(tmp_path, data, out, sandbox.momo_url)))
    line = one_line_error(proc)
    assert proc.returncode == 2 and str(data) in line
    assert len(line) < 400 and line.isprintable() and "\\x" not in line, line
    assert not posts(sandbox.records())


# -- secrets -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("pasted", ["momo-live-3f9a8b7c6d5e4f3a2b1c", "abc def", "key=with=equals", "日本語のキー",
                                    "sk-proj-Zx81234567890"])
def test_a_key_pasted_as_api_key_env_is_never_echoed(tmp_path: Path, pasted: str) -> None:
    job = job_file(tmp_path, questions(tmp_path / "q.csv", 2), tmp_path / "o.parquet", "http://127.0.0.1:9",
                   provider={"api_key_env": pasted})
    proc = cli("run", str(job))
    line = one_line_error(proc)
    assert proc.returncode == 2 and "api_key_env" in line
    for piece in {pasted[i:i + 6] for i in range(max(1, len(pasted) - 5))}:
        assert piece not in line, line


@pytest.mark.parametrize("key", ["momo-live-3f9a8b7c6d5e4f3a2b1c", "token with space 123"])
def test_a_key_in_the_job_file_is_never_echoed(tmp_path: Path, key: str) -> None:
    """A key where a key name goes (``access_token_env``), or any field the job file does not know
    (``api_key = "..."``): the error names the field, never the value."""
    for table in ({"provider": {"access_token_env": key}}, {"provider": {"api_key": key}}):
        job = job_file(tmp_path, questions(tmp_path / "q.csv", 2), tmp_path / "o.parquet", "http://127.0.0.1:9",
                       **table)
        proc = cli("run", str(job))
        line = one_line_error(proc)
        assert proc.returncode == 2 and next(iter(table["provider"])) in line
        assert key not in line and key[:8] not in line, line


def test_the_cli_names_a_wait_it_will_not_make_and_exits_10(tmp_path: Path) -> None:
    from pipeline.sandbox import FaultConfig, SandboxConfig

    faults = FaultConfig(long_rate_limit=1.0, long_retry_after=3600.0, max_faults_per_prompt=1)
    with Sandbox(SandboxConfig(faults=faults)).running() as sb:
        job = job_file(tmp_path, questions(tmp_path / "q.csv", 5), tmp_path / "out.parquet", sb.momo_url,
                       limits={"max_wait_seconds": 60})
        proc = cli("run", str(job), "--quiet", "--json")
        text = cli("run", str(job), "--quiet")
    summary = json.loads(proc.stdout)
    assert proc.returncode == 10 and summary["exit_code"] == 10 and summary["stop_code"] == "WAIT_TOO_LONG"
    assert "3600 s (Retry-After)" in summary["stop_message"] and "max_wait_seconds = 60 s" in summary["stop_message"]
    said = " ".join(text.stdout.replace("│", " ").split())  # the summary table, its cells unwrapped
    assert text.returncode == 10 and "WAIT_TOO_LONG: the server asked to wait 3600 s" in said
    assert "Traceback" not in proc.stderr + text.stderr
