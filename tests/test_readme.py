"""What the README shows works: every TOML snippet loads, every CLI flag exists, the SDK example runs.

Blocks are found by their fence language, not by position, so README edits elsewhere do not
break these tests; a new snippet is checked as soon as it is written.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from pipeline import Job
from pipeline.cli import app
from pipeline.plan import prepare
from pipeline.sandbox import Sandbox, SandboxConfig

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
def test_toml_snippet_loads(snippet: str, commented: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the README's paths are relative to the project
    text = with_settings_switched_on(snippet) if commented == "commented-settings-on" else snippet
    data = tomllib.loads(text)
    if set(data) & JOB_TABLES:
        job = Job.from_dict(completed_job(data), origin="README snippet")
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


# -- the SDK example -----------------------------------------------------------------------------
def sdk_snippets() -> list[str]:
    return [block for block in fenced("python") if "MomoAI" in block]


def pointed_at(snippet: str, base_url: str) -> str:
    """The snippet with its base URL and key replaced by the test sandbox's."""
    snippet = re.sub(r'base_url\s*=\s*"[^"]*"', f'base_url="{base_url}"', snippet)
    return re.sub(r'api_key\s*=\s*"[^"]*"', 'api_key="momo-sandbox-pro"', snippet)


def test_the_readme_shows_the_sync_and_async_sdk() -> None:
    snippets = sdk_snippets()
    assert any("AsyncMomoAI" in s for s in snippets) and any("MomoAI(" in s for s in snippets)


@pytest.mark.parametrize("snippet", [pytest.param(s, id=f"sdk-{i}") for i, s in enumerate(sdk_snippets(), 1)])
def test_sdk_snippet_runs(snippet: str, capsys: pytest.CaptureFixture[str]) -> None:
    with Sandbox(SandboxConfig()).running() as sb:
        code = pointed_at(snippet, sb.momo_url)
        assert sb.momo_url in code, "the snippet names no base_url to point at the sandbox"
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
        served = [r for r in sb.records() if r["status"] == 200]
    printed = capsys.readouterr().out
    assert "Answer to: Hello, World!" in printed and served


def test_python_snippets_compile() -> None:
    for block in fenced("python"):
        compile(block, "README.md", "exec")

