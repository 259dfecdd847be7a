"""docs/jobfile.md is what the job models say, key for key (pipeline/jobref.py writes it)."""

from __future__ import annotations

import re

from pipeline.config import Job, LimitsConfig
from pipeline.jobref import TABLES, job_reference, undocumented

from .helpers import ROOT

PAGE = ROOT / "docs" / "jobfile.md"
REGENERATE = ".venv/bin/python -m pipeline.jobref > docs/jobfile.md"


def test_the_page_is_what_the_models_generate() -> None:
    assert PAGE.read_text(encoding="utf-8") == job_reference(), f"docs/jobfile.md is stale: {REGENERATE}"


def test_every_key_has_a_meaning() -> None:
    assert undocumented() == []


def test_every_table_of_a_job_is_on_the_page() -> None:
    tables = {name.split(".")[0] for name, _, _ in TABLES}
    assert tables == set(Job.model_fields) - {"source"}


def rows(table: str) -> dict[str, tuple[str, str]]:
    """key -> (type, default) as the page shows them, read back from the markdown."""
    section = job_reference().split(f"## `[{table}]`", 1)[1].split("\n## ", 1)[0]
    return {key: (kind, default) for key, kind, default in
            re.findall(r"^\| `([\w]+)` \| (.+?) \| (.+?) \| .* \|$", section, re.MULTILINE)}


def test_defaults_on_the_page_are_the_ones_a_bare_job_gets() -> None:
    limits = rows("limits")
    bare = LimitsConfig()  # what a job without a [limits] table runs with
    assert limits["tier"][1] == f'`"{bare.tier}"`' == '`"free"`'
    assert limits["concurrency"] == ("integer", "`16`") and bare.concurrency == 16
    assert limits["max_cost"][1] == "unset" and bare.max_cost is None
    assert rows("input")["path"] == ("path", "required")
    assert rows("provider")["kind"][0] == '`"momo"` \\| `"openai"`'
    assert rows("reuse")["dedup"] == ("boolean", "`true`")
    assert rows("label")["schema"][0] == "table"  # the TOML name, not the Python attribute schema_
    assert rows("label.escalate")["below"] == ("number", "`0.67`")
