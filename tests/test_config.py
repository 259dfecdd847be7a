"""The job file: validated once, errors name the file and the key."""

from __future__ import annotations

import re
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


# -- paths are relative to the job file ----------------------------------------------------------
def job_text(input_path: str, output_path: str, extra: str = "") -> str:
    return (f"[input]\npath = '{input_path}'\n[prompt]\ntemplate = '{{q}}'\n[provider]\nagent_id = 1\n"
            f"[output]\npath = '{output_path}'\n{extra}")


def test_relative_paths_are_taken_from_the_job_files_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "jobs").mkdir()
    job_file = tmp_path / "jobs" / "j.toml"
    job_file.write_text(job_text("../data/q.csv", "out/o.parquet", "[reuse]\ncache = 'cache'\n"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    job = Job.load(job_file)
    assert job.input.path == tmp_path / "data" / "q.csv"  # folded: no "jobs/.." in messages
    assert job.output.path == tmp_path / "jobs" / "out" / "o.parquet"
    assert job.reuse.cache == tmp_path / "jobs" / "cache"
    # a job file named relatively gives relative paths, from where the command runs
    monkeypatch.chdir(tmp_path)
    assert Job.load("jobs/j.toml").input.path == Path("data/q.csv")


def test_absolute_paths_stay_and_dicts_keep_the_working_directory(tmp_path: Path) -> None:
    job_file = tmp_path / "j.toml"
    job_file.write_text(job_text("/srv/q.csv", "/srv/o.parquet"))
    job = Job.load(job_file)
    assert (job.input.path, job.output.path, job.reuse.cache) == (Path("/srv/q.csv"), Path("/srv/o.parquet"), None)
    data = {"input": {"path": "q.csv"}, "prompt": {"template": "{q}"}, "provider": {"agent_id": 1},
            "output": {"path": "o.parquet"}}
    assert Job.from_dict(data).input.path == Path("q.csv")


def test_a_missing_input_is_named_by_its_resolved_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.plan import prepare

    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "j.toml").write_text(job_text("../data/q.csv", "o.parquet"))
    monkeypatch.chdir(tmp_path / "jobs")
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'data' / 'q.csv'}: input file not found")):
        prepare(Job.load(tmp_path / "jobs" / "j.toml"))


@pytest.mark.parametrize(("limits", "said"), [
    ("", '10 requests/min (limits.tier not set: the default, "free")'),
    ("[limits]\ntier = 'pro'\n", '300 requests/min (limits.tier = "pro" in the job)'),
    ("[limits]\ntier = 'enterprise'\n", 'no limit (limits.tier = "enterprise" in the job)'),
    ("[limits]\ntier = 'pro'\nrequests_per_minute = 42\n", "42 requests/min (limits.requests_per_minute in the job)"),
])
def test_the_rate_says_where_it_comes_from(tmp_path: Path, limits: str, said: str) -> None:
    (tmp_path / "j.toml").write_text(job_text("q.csv", "o.parquet", limits))
    assert Job.load(tmp_path / "j.toml").limits.describe_rate() == said
