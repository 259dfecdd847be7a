"""What the README shows works: every block runs as printed, every TOML snippet loads, every CLI flag exists.

Blocks are found by their fence language, not by position, so README edits elsewhere do not
break these tests; a new snippet is checked as soon as it is written.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pipeline import Job, __version__
from pipeline.cli import app
from pipeline.plan import prepare
from pipeline.sandbox import SandboxConfig

from .helpers import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCED = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SAMPLE_JOBS = sorted((ROOT / "jobs").glob("*.toml"))
JOB_TABLES = {"input", "prompt", "provider", "limits", "output", "reuse", "label"}
# a commented-out setting (`# key = value` at the start of a line) is documented too
COMMENTED_SETTING = re.compile(r"^#\s*(?=[A-Za-z_][\w.-]*\s*=)", re.MULTILINE)
CLI_LINE = re.compile(r"(?:momo-batch|python -m pipeline)\s+([a-z][\w-]*)([^\n`#]*)")
FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def fenced(language: str) -> list[str]:
    return [body for lang, body in FENCED.findall(README) if lang == language]


def outside_fences() -> str:
    return FENCED.sub("", README)


# -- TOML ----------------------------------------------------------------------------------------
def with_settings_switched_on(snippet: str) -> str:
    return COMMENTED_SETTING.sub("", snippet)


def base_job_for(tables: set[str]) -> dict[str, Any]:
    """The first sample job that has every table the snippet names (so [label] gets the label job)."""
    for path in SAMPLE_JOBS:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        if tables <= set(data):
            return data
    raise AssertionError(f"no job in jobs/ has the tables {sorted(tables)} to complete the snippet with")


def completed_job(snippet: dict[str, Any]) -> dict[str, Any]:
    """A partial job snippet filled in from a sample job: the snippet's keys win, table by table."""
    job = base_job_for(set(snippet))
    for name, table in snippet.items():
        job[name] = {**job.get(name, {}), **table}
    return job


TOML_SNIPPETS = [pytest.param(block, id=f"toml-{i}") for i, block in enumerate(fenced("toml"), 1)]


def test_the_readme_has_toml_snippets() -> None:
    assert TOML_SNIPPETS, "README has no ```toml block"


@pytest.mark.parametrize("snippet", TOML_SNIPPETS)
@pytest.mark.parametrize("commented", ["as-shown", "commented-settings-on"])
def test_toml_snippet_loads(snippet: str, commented: str) -> None:
    text = with_settings_switched_on(snippet) if commented == "commented-settings-on" else snippet
    data = tomllib.loads(text)
    if set(data) & JOB_TABLES:
        job = Job.from_dict(completed_job(data), origin="README snippet").relative_to(ROOT / "jobs")
        prepare(job)  # the whole job: tables, [label], the input's columns against the prompt
    else:
        SandboxConfig.model_validate(data)


def test_job_tables_are_the_schemas_tables() -> None:
    # telling a job snippet from a sandbox config, above, relies on this list
    assert set(Job.model_fields) - {"source"} == JOB_TABLES


# -- CLI flags -----------------------------------------------------------------------------------
def help_text(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], env={"NO_COLOR": "1", "COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    return result.output


def flags_in_help(command: str) -> set[str]:
    return set(FLAG.findall(help_text(command)))


def commands_in_help() -> set[str]:
    listed = help_text().split("Commands", 1)[1]
    return set(re.findall(r"^\W*([a-z][\w-]*)\s{2,}\S", listed, re.MULTILINE))  # the name column


def readme_command_lines() -> Iterator[tuple[str, list[str]]]:
    """(command, flags) for every ``momo-batch CMD ...`` in code blocks and inline code."""
    code = "\n".join(body for _, body in FENCED.findall(README)) + "\n" + "\n".join(re.findall(r"`([^`\n]+)`", README))
    for command, args in CLI_LINE.findall(code):
        yield command, FLAG.findall(args)


COMMAND_LINES = sorted({(cmd, tuple(flags)) for cmd, flags in readme_command_lines()})


def test_the_readme_shows_commands() -> None:
    assert {cmd for cmd, _ in COMMAND_LINES} >= {"run", "estimate", "agents", "balance", "sandbox"}


@pytest.mark.parametrize(("command", "flags"), COMMAND_LINES, ids=[" ".join([c, *f]) for c, f in COMMAND_LINES])
def test_every_command_line_uses_real_flags(command: str, flags: tuple[str, ...]) -> None:
    assert command in commands_in_help()
    missing = set(flags) - flags_in_help(command)
    assert not missing, f"`momo-batch {command}` has no {sorted(missing)} in its --help"


def test_every_flag_named_in_the_text_exists() -> None:
    """Flags in inline code outside command lines (`--yes`, `--format jsonl|csv`) belong to some command."""
    spans = [s for s in re.findall(r"`([^`\n]+)`", outside_fences()) if s.startswith("--")]
    named = {flag for span in spans for flag in FLAG.findall(span)}
    known = set().union(*(flags_in_help(command) for command in commands_in_help()))
    assert named and not named - known, f"README names flags no command has: {sorted(named - known)}"


# -- the README as a new user follows it ---------------------------------------------------------
# Every ```sh and ```python block runs, in the order printed, as one shell session in a fresh copy
# of the project (its tracked files and the `.venv` that `make run` made): the shell blocks
# verbatim, each Python block saved to a file and run with `python FILE` where it stands. The
# server block (```sh server) runs in the background, as the README says, in another terminal.
# Only blocks fenced ```sh not-run are left out, and only for what a test cannot do: `make`
# (this test runs inside `make test`) and a Ray cluster of several machines.
BLOCK = re.compile(r"^```([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
NOT_RUN_REASONS = ("make run", "make test", "ray start")
SANDBOX_PORT = 8765  # the port the README's blocks name


def blocks() -> list[tuple[str, str]]:
    return [(info.strip(), body) for info, body in BLOCK.findall(README)]


def session_script(folder: Path) -> str:
    """The README's blocks as one bash session; each Python block is written into ``folder``."""
    lines = ["set -euo pipefail"]
    for n, (info, body) in enumerate(blocks(), 1):
        if info == "sh":
            lines += [f"echo '### block {n}: sh' >&2", body]
        elif info == "python":
            script = folder / f"readme-block-{n}.py"
            script.write_text(body, encoding="utf-8")
            lines += [f"echo '### block {n}: python' >&2", f"python {script.name}"]
    return "\n".join(lines) + "\n"


def test_blocks_left_out_are_only_what_a_test_cannot_run() -> None:
    kinds = {info for info, _ in blocks()}
    assert kinds <= {"sh", "sh not-run", "sh server", "python", "toml"}, kinds
    for info, body in blocks():
        if info == "sh not-run":
            commands = [ln for ln in body.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
            assert all(any(r in ln for r in NOT_RUN_REASONS) or "--address" in ln for ln in commands), body
    assert sum(info == "sh server" for info, _ in blocks()) == 1


def fresh_copy(dest: Path) -> Path:
    """The project's tracked files as they are now, and a link to its `.venv` (what `make run` made)."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in tracked.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    (dest / ".venv").symlink_to(ROOT / ".venv")
    return dest


def user_env(home: Path) -> dict[str, str]:
    """A new user's shell: no keys, no MOMO_* variables, and `momo-batch` not yet on PATH."""
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if Path(p).resolve() != (ROOT / ".venv" / "bin").resolve())
    return {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8", "NO_COLOR": "1", "COLUMNS": "120",
            "TMPDIR": os.environ.get("TMPDIR", "/tmp")}


@contextlib.contextmanager
def readme_server(clone: Path, env: dict[str, str]) -> Iterator[None]:
    """The ```sh server block, running until the session ends. One README session per machine at a
    time: the port is the README's, so concurrent runs (other worktrees) wait their turn on a lock."""
    body = next(body for info, body in blocks() if info == "sh server")
    lock = (Path(tempfile.gettempdir()) / f"momo-batch-readme-{SANDBOX_PORT}.lock").open("w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    activated = {**env, "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"}  # as after `activate`
    server = subprocess.Popen(["bash", "-c", f"exec {body.strip()}"], cwd=clone, env=activated,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert server.stdout is not None
        first = server.stdout.readline()  # blocks until the server says it listens, or exits
        assert f":{SANDBOX_PORT}" in first and "listening" in first, \
            f"the README's sandbox did not start on port {SANDBOX_PORT}: {first}{server.stdout.read()}"
        yield
    finally:
        server.terminate()
        server.wait(timeout=30)
        if server.stdout is not None:
            server.stdout.close()
        lock.close()


@pytest.mark.timeout(900)
def test_every_block_runs_as_printed_in_a_fresh_copy(tmp_path: Path) -> None:
    clone = fresh_copy(tmp_path / "momo-batch")
    home = tmp_path / "home"
    home.mkdir()
    env = user_env(home)
    script = session_script(clone)
    with readme_server(clone, env):
        proc = subprocess.run(["bash", "-c", script], cwd=clone, env=env, capture_output=True, text=True,
                              timeout=850)
    ran = re.findall(r"^### block (\d+)", proc.stderr, re.MULTILINE)
    assert proc.returncode == 0, (
        f"README block {ran[-1] if ran else '?'} failed (exit {proc.returncode}):\n"
        f"{proc.stderr[-3000:]}\n--- stdout ---\n{proc.stdout[-2000:]}")
    expected = [str(n) for n, (info, _) in enumerate(blocks(), 1) if info in ("sh", "python")]
    assert ran == expected
    # what the blocks print, checked against what they must have done
    assert proc.stdout.startswith(f"momo-batch {__version__}\n")  # the first command after `activate`
    assert "Answer to: Hello, World!" in proc.stdout  # the SDK blocks reached the README's server
    assert "Answer to: What is 2 + 2?" in proc.stdout  # run_frame, with a frame of the README's
    assert re.search(r"accuracy \d+\.\d% over 120 rows", proc.stdout)  # evaluate() of the label job
    for out in ("questions.parquet", "questions.report.html", "reviews-gold-labelled.parquet"):
        assert (clone / "data" / "out" / out).is_file(), out
    assert (clone / "myjob" / "out" / "summaries.parquet").is_file()  # relative to the job file
    assert "Traceback" not in proc.stderr
    (Path(os.environ.get("README_TRANSCRIPT", tmp_path / "transcript.txt"))).write_text(
        f"{proc.stdout}\n--- stderr ---\n{proc.stderr}", encoding="utf-8")
