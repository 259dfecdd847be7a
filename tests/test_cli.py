"""The ``momo-batch`` command as a user runs it: a real process, a real sandbox, one-line errors."""

from __future__ import annotations

import functools
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from . import helpers

ROOT = Path(__file__).resolve().parents[1]
KEY = "momo-sandbox-pro"


cli = functools.partial(helpers.cli, key=KEY)  # the demo key, unless a test says key=None


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_agents_lists_every_page(sandbox: object) -> None:
    proc = cli("agents", "--json", "--base-url", sandbox.momo_url)  # type: ignore[attr-defined]
    assert proc.returncode == 0, proc.stderr
    agents = json.loads(proc.stdout)
    assert len(agents) > 20 and len({a["id"] for a in agents}) == len(agents)
    table = cli("agents", MOMO_BASE_URL=sandbox.momo_url)  # type: ignore[attr-defined]
    assert table.returncode == 0 and "gpt5.2" in table.stdout


def test_balance_shows_packages(sandbox: object) -> None:
    proc = cli("balance", "--json", MOMO_BASE_URL=sandbox.momo_url)  # type: ignore[attr-defined]
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["currency"] == "CNY" and data["balance"] > 0
    assert data["packages"] == [{"agent_id": 159, "remaining_tokens": 50_000}]
    text = cli("balance", MOMO_BASE_URL=sandbox.momo_url)  # type: ignore[attr-defined]
    assert "CNY" in text.stdout and "50,000" in text.stdout


@pytest.mark.parametrize("command", ["agents", "balance"])
def test_bad_key_is_one_line_and_never_echoed(sandbox: object, command: str) -> None:
    secret = "momo-wrong-key-that-must-not-be-printed"
    proc = cli(command, key=secret, MOMO_BASE_URL=sandbox.momo_url)  # type: ignore[attr-defined]
    line = one_line_error(proc)
    assert "INVALID_API_KEY" in line and secret not in proc.stderr + proc.stdout
    assert proc.returncode == 5


@pytest.mark.parametrize("command", ["agents", "balance"])
def test_unreachable_server_is_one_line(command: str) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = one_line_error(cli(command, "--base-url", f"http://127.0.0.1:{port}/v1"))
    assert "unreachable" in line


def test_missing_key_and_bad_argument() -> None:
    assert "MOMO_API_KEY" in one_line_error(cli("agents", key=None))
    proc = cli("run", "jobs/example.toml", "--format", "xml")
    assert "--format" in one_line_error(proc) and proc.returncode == 2


def test_bad_input_column_fails_before_any_call(tmp_path: Path, sandbox: object) -> None:
    data = tmp_path / "in.csv"
    data.write_text("id,text\n1,hello\n")
    job = tmp_path / "job.toml"
    job.write_text(f'[input]\npath = "{data}"\n[prompt]\ntemplate = "{{question}}"\n'
                   f'[provider]\nkind = "momo"\nagent_id = 159\n[output]\npath = "{tmp_path / "o.parquet"}"\n')
    proc = cli("run", str(job), MOMO_BASE_URL=sandbox.momo_url)  # type: ignore[attr-defined]
    line = one_line_error(proc)
    assert "question" in line and str(data.name) in line and proc.returncode == 2
    assert not (tmp_path / "o.parquet").exists()
    assert not sandbox.records()  # type: ignore[attr-defined]


def test_example_job_with_embedded_sandbox(tmp_path: Path) -> None:
    out = tmp_path / "questions.parquet"
    proc = cli("run", "jobs/example.toml", "--sandbox", "--output", str(out), "--json", key=None)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    frame = pl.read_parquet(out)
    assert frame.height == summary["rows"] == 50
    assert summary["ok"] == 49 and summary["skipped"] == 1
    assert frame["tokens_used"].drop_nulls().min() > 0
    # money says its unit, and a 0 says why: the sandbox key's prepaid package paid every token
    assert summary["currency"] == "CNY"
    assert summary["cost"] == 0 and frame["cost"].sum() == 0
    tokens = int(frame["tokens_used"].sum())
    assert summary["tokens"] == tokens and f"prepaid package: {tokens:,} tokens" in summary["cost_note"]


def test_estimate_json_with_pilot(tmp_path: Path) -> None:
    proc = cli("estimate", "jobs/example.toml", "--sandbox", "--pilot", "5", "--json",
               "--output", str(tmp_path / "q.parquet"), key=None)
    assert proc.returncode == 0, proc.stderr
    est = json.loads(proc.stdout.strip().splitlines()[-1])
    assert est["pilot_rows"] == 5 and est["worst_case"] >= est["expected_cost"]
    assert "toktok" in est["tokenizer"]


def test_sandbox_command_serves_until_stopped() -> None:
    command = [sys.executable, "-m", "pipeline", "sandbox", "--port", "0", "--window-seconds", "2",
               "--algorithm", "sliding_log"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]  # "sandbox listening on http://127.0.0.1:PORT"
        try:
            listed = cli("agents", "--json", "--base-url", url + "/v1")
        finally:
            proc.terminate()
            proc.communicate(timeout=10)
    assert listed.returncode == 0 and len(json.loads(listed.stdout)) > 20


def test_sandbox_command_rejects_a_bad_option() -> None:
    proc = cli("sandbox", "--port", "0", "--algorithm", "leaky")
    assert "algorithm" in one_line_error(proc) and proc.returncode == 2


def test_eval_of_a_sandbox_label_run_against_its_gold_column(tmp_path: Path) -> None:
    out = tmp_path / "gold.parquet"
    proc = cli("run", "jobs/label-gold.toml", "--sandbox", "--limit", "40", "--output", str(out), "--quiet", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["labels"]["escalated"] > 0
    ev = cli("eval", str(out), "--gold", "gold", "--by", "case", "--json")
    assert ev.returncode == 0, ev.stderr
    got = json.loads(ev.stdout)
    table = pl.read_parquet(out)
    # the sandbox knew the gold column of this CSV input (--sandbox), so the labels are mostly right
    assert got["rows"] == 40 and got["accuracy"] == pytest.approx((table["label"] == table["gold"]).mean(), abs=1e-6)
    assert got["accuracy"] > 0.8 and {g["value"] for g in got["by_source"]} <= {"votes", "escalation",
                                                                                 "escalation_unparsed"}
    assert {g["value"] for g in got["by"]["case"]} == {"plain", "sarcasm"}  # the first 40 rows
    assert one_line_error(cli("eval", str(out), "--gold", "stars")).startswith("error: eval: no column 'stars'")


def test_the_first_hour_small_things(tmp_path: Path) -> None:
    """--version; help without eaten brackets and with examples; a missing key points at --sandbox."""
    from pipeline import __version__

    assert cli("--version").stdout.strip() == f"momo-batch {__version__}"
    run_help = cli("run", "--help", COLUMNS="200").stdout
    assert "overrides  path" not in run_help and "(needs momo-batch)" not in run_help
    assert "instead of the job's output path" in run_help
    assert "Examples" in run_help and "momo-batch run jobs/example.toml --sandbox" in run_help
    line = one_line_error(cli("run", "jobs/example.toml", key=None))
    assert "MOMO_API_KEY" in line and "--sandbox" in line


def test_estimate_and_run_say_the_rate_and_why_a_cost_is_0(tmp_path: Path) -> None:
    """A job that sets no tier runs at the slowest; both commands say so. The sandbox's prepaid
    package covers agent 159, so the cost is 0 and says why, in its currency."""
    job = tmp_path / "job.toml"
    job.write_text(f'[input]\npath = "{ROOT / "data" / "questions.csv"}"\n[prompt]\ntemplate = "{{question}}"\n'
                   f'[provider]\nagent_id = 159\nmax_tokens = 50\n[output]\npath = "out.parquet"\n')
    est = cli("estimate", str(job), "--sandbox", "--limit", "3", COLUMNS="200", NO_COLOR="1")
    assert est.returncode == 0, est.stderr
    assert 'time at 10 requests/min (limits.tier not set: the default, "free")' in est.stdout
    assert re.search(r"0\.000000 CNY .*\n.*0: a prepaid package covers ~[\d,]+ tokens \(list price 0\.\d+ CNY\)",
                     est.stdout)
    done = cli("run", str(job), "--sandbox", "--limit", "1", "--quiet", COLUMNS="200", NO_COLOR="1")
    assert done.returncode == 0, done.stderr
    assert 'rate assumed: 10 requests/min (limits.tier not set: the default, "free")' in done.stdout
    assert (tmp_path / "out.parquet").is_file()  # the output, relative to the job file
