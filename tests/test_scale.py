"""Memory flat in rows (issue 22), on small inputs with the batch and bucket sizes made tiny, so
that each path a ten-million-row job takes is taken here: the plan's keys on disk in many
batches and buckets (:mod:`pipeline.spill`), the Parquet input read a slice at a time, the
outcomes of repeated keys read once (:class:`pipeline.sink.OutcomeReader`), the pilot's sample
drawn without a list of the rows. Each is checked against a reference computed here, in plain
Python, over the whole input at once (what the code did before it streamed)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import plan as plan_module
from pipeline import spill
from pipeline.config import Job
from pipeline.dataset import PROMPT, ROW, Dataset
from pipeline.estimator import pick_sample
from pipeline.keys import FIRST, KEY, OCC, repeat_key
from pipeline.plan import prepare
from pipeline.sink import OutcomeReader, decode_outcomes, record_schema

PROMPTS = st.lists(st.one_of(st.none(), st.just(""), st.just("  "), st.sampled_from(["a", "b", "c", "d", "é", "a "])),
                   min_size=1, max_size=60)


def _job(tmp: Path, prompts: Sequence[str | None], *, dedup: bool = True, suffix: str = "parquet") -> Job:
    frame = pl.DataFrame({"id": list(range(len(prompts))), "q": list(prompts)}, schema={"id": pl.Int64, "q": pl.String})
    path = tmp / f"in.{suffix}"
    if suffix == "parquet":
        frame.write_parquet(path, row_group_size=7)  # many row groups: slices cross their edges
    else:
        frame.write_csv(path)
    return Job.from_dict({"input": {"path": str(path), "id_column": "id"}, "prompt": {"template": "{q}"},
                          "provider": {"kind": "momo", "agent_id": 159, "max_tokens": 300},
                          "reuse": {"dedup": dedup}, "output": {"path": str(tmp / "out.parquet")}})


def _reference(keyer: Any, prompts: Sequence[str | None], *, dedup: bool) -> list[tuple[str | None, bool, int]]:
    """``(KEY, FIRST, OCC)`` of each row, the whole input at once, in plain Python."""
    seen: dict[str, int] = {}
    out: list[tuple[str | None, bool, int]] = []
    for p in prompts:
        if p is None or not p.strip():
            out.append((None, True, 0))
            continue
        key = keyer.row(p)
        n = seen.get(key, 0)
        seen[key] = n + 1
        if dedup:
            out.append((key, n == 0, 0))
        else:
            out.append((repeat_key(key, n), True, n))
    return out


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompts=PROMPTS, plan_rows=st.integers(1, 9), bucket_rows=st.integers(1, 9), dedup=st.booleans(),
       batch_rows=st.integers(1, 13), range_rows=st.integers(1, 11))
def test_the_plan_keys_rows_on_disk_as_the_whole_input_at_once_would(
        tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, prompts: list[str | None],
        plan_rows: int, bucket_rows: int, dedup: bool, batch_rows: int, range_rows: int) -> None:
    monkeypatch.setattr(plan_module, "PLAN_ROWS", plan_rows)  # many plan batches
    monkeypatch.setattr(spill, "BUCKET_ROWS", bucket_rows)  # many buckets
    monkeypatch.setattr(spill, "RANGE_ROWS", range_rows)  # dedup off: repeats in many files
    tmp = tmp_path_factory.mktemp("plan")
    with prepare(_job(tmp, prompts, dedup=dedup), endpoint="http://fake") as plan:
        expected = _reference(plan.keyer, prompts, dedup=dedup)
        got = plan.read_keys()
        assert list(got.select(KEY, FIRST, OCC).iter_rows()) == expected
        # any other pass over the input, in batches of any size, gets each row its own keys
        rows = pl.concat(list(plan.batches(batch_rows)))
        assert rows[ROW].to_list() == list(range(len(prompts)))
        assert rows[PROMPT].to_list() == list(prompts)
        assert list(rows.select(KEY, FIRST, OCC).iter_rows()) == expected
        sent = [k for k, _, _ in expected if k is not None]
        assert (plan.n_rows, plan.sendable, plan.distinct) == (len(prompts), len(sent), len(set(sent)))
        root = plan.spill._root  # noqa: SLF001 - our own module: where its files are
        assert root.exists()
    assert not root.exists()  # closing the plan removes its files


def test_a_prompt_repeated_over_many_batches_costs_its_bucket_one_row_a_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plan_module, "PLAN_ROWS", 10)
    written: list[int] = []
    original = spill._Stream.write  # noqa: SLF001

    def counting(self: Any, frame: pl.DataFrame) -> None:
        if self.path.name.startswith("bucket"):
            written.append(frame.height)
        original(self, frame)

    monkeypatch.setattr(spill._Stream, "write", counting)  # noqa: SLF001
    with prepare(_job(tmp_path, ["same"] * 95), endpoint="http://fake") as plan:
        assert plan.distinct == 1 and plan.read_keys()[FIRST].to_list() == [True] + [False] * 94
    assert written == [1] * 10  # ten batches, one row each


def test_the_plan_removes_its_files_when_the_input_fails_halfway(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Path] = []
    original = spill.KeySpill.__init__

    def remember(self: Any, *args: Any, **kw: Any) -> None:
        original(self, *args, **kw)
        made.append(self._root)  # noqa: SLF001

    monkeypatch.setattr(spill.KeySpill, "__init__", remember)
    monkeypatch.setattr(plan_module, "PLAN_ROWS", 2)
    keyed = plan_module.key_column
    calls = []

    def failing(keyer: Any, prompts: pl.Series) -> pl.Series:  # as a read error in the third batch would
        calls.append(1)
        if len(calls) == 3:
            raise OSError("EIO")
        return keyed(keyer, prompts)

    monkeypatch.setattr(plan_module, "key_column", failing)
    with pytest.raises(OSError, match="EIO"):
        prepare(_job(tmp_path, ["a", "b", "c", "d", "e", "f"]), endpoint="http://fake")
    assert made and not made[0].exists()


def test_a_ragged_csv_line_anywhere_fails_before_the_plan_keys_a_row(tmp_path: Path) -> None:
    job = _job(tmp_path, [f"q{i}" for i in range(100)], suffix="csv")
    path = Path(job.input.path)
    path.write_text(path.read_text() + '100,"f"\n101,g,extra,fields\n')  # a ragged line at the end
    with pytest.raises(Exception, match=r"in\.csv.*line 103 has 4 fields, the header 2"):
        prepare(job, endpoint="http://fake")


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
@pytest.mark.parametrize("batch_rows,limit", [(1, None), (4, None), (7, None), (100, None), (3, 10)])
def test_the_input_is_read_in_order_a_batch_at_a_time(tmp_path: Path, suffix: str, batch_rows: int,
                                                       limit: int | None) -> None:
    prompts = [f"q{i}" if i % 5 else None for i in range(23)]
    job = _job(tmp_path, prompts, suffix=suffix)
    dataset = Dataset(job.input.path, "id", limit=limit)
    frames = list(dataset.frames(batch_rows=batch_rows))
    assert all(f.height <= batch_rows for f in frames) or suffix == "csv"  # polars' CSV chunks are its own
    whole = pl.concat(frames)
    n = limit or len(prompts)
    assert whole[ROW].to_list() == list(range(n))
    assert whole["q"].to_list() == prompts[:n] and whole["id"].to_list() == list(range(n))


class _Source:
    """A ledger's ``outcomes`` over a dict, counting the keys asked for."""

    def __init__(self, records: dict[str, dict[str, Any]]) -> None:
        self.records, self.asked = records, []  # type: ignore[var-annotated]

    def outcomes(self, keys: Sequence[str]) -> pl.DataFrame:
        import json

        self.asked += list(keys)
        rows = [(k, 2, json.dumps(self.records[k])) for k in dict.fromkeys(keys) if k in self.records]
        return pl.DataFrame(rows, schema={"key": pl.String, "state": pl.Int64, "record": pl.String}, orient="row")


@pytest.mark.parametrize("kept", [1, 2, 3, 1000])
def test_the_output_reads_a_repeated_keys_outcome_once_while_it_is_kept(kept: int) -> None:
    schema = record_schema({})
    records = {k: {"status": "ok", "response": f"answer {k}", "tokens_used": i, "cost": i / 10,
                   "attempts": 1, "finished_at": "2026-12-07T00:00:00+00:00"}
               for i, k in enumerate("abcd")}
    source = _Source(records)
    reader = OutcomeReader(source, schema, kept=kept)
    batches = [["a", "b", None], ["a", "e", "b"], ["c", "a"], ["a", "a", "d"], ["a"]]
    for batch in batches:
        keys = pl.Series(KEY, batch, pl.String)
        got = pl.DataFrame([keys]).join(reader.of(keys), on=KEY, how="left", maintain_order="left")
        expected = pl.DataFrame([keys]).join(decode_outcomes(_Source(records).outcomes(
            [k for k in batch if k is not None]), schema), on=KEY, how="left", maintain_order="left")
        assert got.select(KEY, "response", "cost").equals(expected.select(KEY, "response", "cost"))
    if kept >= 5:  # each of the five keys (e has no outcome) asked for once
        assert sorted(source.asked) == ["a", "b", "c", "d", "e"]
    else:  # forgotten keys are asked again, and never a key the reader still holds
        assert len(source.asked) > 5


@pytest.mark.parametrize("n", [0, 1, 3, 6, 50])
def test_the_pilots_sample_is_the_one_a_list_of_every_distinct_row_gave(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    monkeypatch.setattr(plan_module, "PLAN_ROWS", 4)
    prompts = ["a", "b", None, "a", "c", "", "d", "b", "e", "f", "g", "a", "h"]
    with prepare(_job(tmp_path, prompts), endpoint="http://fake") as plan:
        keys = plan.read_keys()
        distinct_rows = [i for i, (k, first) in enumerate(keys.select(KEY, FIRST).iter_rows()) if k and first]
        # what pick_sample did when the plan held every key in memory
        expected = set(random.Random(0).sample(distinct_rows, min(n, len(distinct_rows)))) if n else set()
        picked = pick_sample(plan, n)
        assert set(picked) == expected
        assert all(picked[row] == keys[KEY][row] for row in picked)


FIELD = st.text(alphabet=st.sampled_from(list('ab ,"\n\r\té')), max_size=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.tuples(FIELD, FIELD), min_size=0, max_size=20), block_bytes=st.integers(1, 64),
       crlf=st.booleans(), trailing_newline=st.booleans())
def test_a_csv_read_a_block_at_a_time_is_the_file_read_whole(
        tmp_path_factory: pytest.TempPathFactory, texts: list[tuple[str, str]], block_bytes: int, crlf: bool,
        trailing_newline: bool) -> None:
    """Quoted fields with commas, doubled quotes and newlines, cut anywhere by the block size."""
    from pipeline import csv_blocks

    path = tmp_path_factory.mktemp("csv") / "in.csv"
    frame = pl.DataFrame({"id": list(range(len(texts))), "a": [a for a, _ in texts], "b": [b for _, b in texts]},
                         schema={"id": pl.Int64, "a": pl.String, "b": pl.String})
    text = frame.write_csv(line_terminator="\r\n" if crlf else "\n")
    path.write_bytes((text if trailing_newline else text.rstrip("\r\n")).encode())
    whole = pl.read_csv(path, schema=frame.schema)
    got = list(csv_blocks.frames(path, whole.schema, block_bytes))
    assert (pl.concat(got) if got else whole.head(0)).equals(whole)


def test_a_full_disk_under_tmpdir_is_said_naming_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from pipeline.errors import WriteError
    from pipeline.outcome import ExitCode

    made: list[Path] = []
    original = spill.KeySpill.__init__

    def remember(self: Any, *args: Any, **kw: Any) -> None:
        original(self, *args, **kw)
        made.append(self._root)  # noqa: SLF001

    def full(self: Any, frame: pl.DataFrame) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spill.KeySpill, "__init__", remember)
    monkeypatch.setattr(spill._Stream, "write", full)  # noqa: SLF001
    with pytest.raises(WriteError) as caught:
        prepare(_job(tmp_path, ["a", "b"]), endpoint="http://fake")
    assert str(made[0]) in str(caught.value) and "No space left on device" in str(caught.value)
    assert "TMPDIR" in str(caught.value) and caught.value.exit_code == ExitCode.WRITE
    assert not made[0].exists()


def test_a_plan_killed_before_it_could_clean_up_is_swept_by_the_next(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``kill -9`` runs no finalizer: the dead plan's folder stays in TMPDIR until another plan
    finds its lock free; a live plan's folder (its lock held) is never touched, however old."""
    import os
    import signal
    import subprocess
    import sys
    import time

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    code = ("import os, sys, time\n"
            "from pipeline.spill import KeySpill\n"
            "spill = KeySpill(10, dedup=True)\n"
            "print(spill._root, flush=True)\n"
            "time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "TMPDIR": str(tmp)})
    assert child.stdout is not None
    dead = Path(child.stdout.readline().strip())  # the child's plan exists and holds its lock
    monkeypatch.setattr(spill.tempfile, "tempdir", str(tmp))
    alive = spill.KeySpill(10, dedup=True)
    old = time.time() - 2 * spill.LEFT_AFTER_SECONDS
    for folder in (dead, alive._root):  # noqa: SLF001
        os.utime(folder, (old, old))
    spill.sweep_left_folders(tmp)
    assert dead.exists() and alive._root.exists()  # noqa: SLF001  both owners live
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    assert dead.exists()  # nothing of the child's ran after the kill
    young = tmp / f"{spill.PREFIX}just-made"  # as another process's, between mkdtemp and its lock
    young.mkdir()
    spill.KeySpill(10, dedup=True).close()  # a new plan sweeps first
    assert not dead.exists() and alive._root.exists() and young.exists()  # noqa: SLF001
    alive.close()
    assert not alive._root.exists()  # noqa: SLF001
