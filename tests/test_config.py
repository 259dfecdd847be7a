"""The job file: validated once, errors name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import Job
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_example_job_loads() -> None:
    job = Job.load(ROOT / "jobs" / "example.toml")
    assert job.provider.agent_id == 159
    assert job.limits.rate_per_window == 300
    assert len(job.fingerprint) == 64


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[input]\npath='a.csv'\n[prompt]\ntemplate='{t}'\n[provider]\nkind='momo'\n"
         "[output]\npath='o.parquet'\n", "agent_id"),
        ("[input]\npath='a.csv'\n[prompt]\n[provider]\nagent_id=1\n[output]\npath='o.parquet'\n",
         "exactly one of prompt.template or prompt.column"),
        ("[input]\npath='a.csv'\n[prompt]\ncolumn='p'\n[provider]\nagent_id=1\n"
         "[limits]\ntier='gold'\n[output]\npath='o.parquet'\n", "limits.tier"),
        ("[input]\npath='a.csv'\ntypo=1\n[prompt]\ncolumn='p'\n[provider]\nagent_id=1\n"
         "[output]\npath='o.parquet'\n", "input.typo"),
        ("not = [toml", "not valid TOML"),
        ("[input]\npath='a.csv'\n[prompt]\ncolumn='p'\n[provider]\nagent_id=1\n[label]\nset=['a','b']\n"
         "votes='three'\n[output]\npath='o.parquet'\n", r"label\.votes: .*'three'"),
        ("[input]\npath='a.csv'\n[prompt]\ncolumn='p'\n[provider]\nagent_id=1\n[label]\nset=['a']\n"
         "[output]\npath='o.parquet'\n", "label: .*at least 2 labels"),
        ("[input]\npath='a.csv'\n[prompt]\ncolumn='p'\n[provider]\nagent_id=1\n[label]\nset=['a','b']\n"
         "colour='red'\n[output]\npath='o.parquet'\n", "label.colour"),
    ],
)
def test_bad_job_files_name_the_file_and_key(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        Job.load(path)
    assert "bad.toml" in str(info.value)


def test_explicit_rate_overrides_tier_and_enterprise_is_unlimited(tmp_path: Path) -> None:
    base = {"input": {"path": "a.csv"}, "prompt": {"column": "p"},
            "provider": {"agent_id": 1}, "output": {"path": "o.parquet"}}
    assert Job.from_dict({**base, "limits": {"tier": "enterprise"}}).limits.rate_per_window is None
    job = Job.from_dict({**base, "limits": {"tier": "free", "requests_per_minute": 42}})
    assert job.limits.rate_per_window == 42
