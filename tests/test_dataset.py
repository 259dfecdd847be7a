"""Reading inputs: clear errors before any paid call, prompts rendered, nulls kept as nulls."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.dataset import PROMPT, ROW, Dataset, PromptTemplate
from pipeline.errors import ConfigError


def test_template_renders_columns_and_keeps_null_when_a_column_is_null(tmp_path: Path) -> None:
    src = tmp_path / "in.parquet"
    pl.DataFrame({"a": ["x", None, "z"], "b": [1, 2, 3]}).write_parquet(src)
    t = PromptTemplate("A={a} B={b} {{literal}}")
    assert t.columns == ["a", "b"]
    batches = list(Dataset(src).batches(["a"], t.expr(), batch_rows=2))
    rows = pl.concat(batches)
    assert rows[PROMPT].to_list() == ["A=x B=1 {literal}", None, "A=z B=3 {literal}"]
    assert rows[ROW].to_list() == [0, 1, 2]
    assert [len(b) for b in batches] == [2, 1]  # batch_rows at a time: what bounds memory


@given(st.text(alphabet=st.characters(blacklist_characters="{}", blacklist_categories=("Cs",)), max_size=30),
       st.text(max_size=30))
def test_template_rendering_matches_str_format(prefix: str, value: str) -> None:
    t = PromptTemplate(prefix + "{col}")
    assert t.render({"col": value}) == prefix + value
    frame = pl.DataFrame({"col": [value]}).select(t.expr())
    assert frame[PROMPT][0] == prefix + value


def test_missing_column_names_file_and_column(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("id,body\n1,hello\n")
    with pytest.raises(ConfigError, match=r"in\.csv.*'text'.*'body'"):
        Dataset(src).check_columns(["text"])


def test_empty_and_unreadable_inputs_are_clear_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty.csv"):
        Dataset(empty).check_columns(["text"])
    header_only = tmp_path / "header.csv"
    header_only.write_text("text\n")
    with pytest.raises(ConfigError, match="no rows"):
        Dataset(header_only).check_columns(["text"])
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(ConfigError, match="broken.parquet"):
        Dataset(broken).check_columns(["text"])
    with pytest.raises(ConfigError, match="not found"):
        Dataset(tmp_path / "nope.csv").check_columns(["text"])
    other = tmp_path / "x.json"
    other.write_text("{}")
    with pytest.raises(ConfigError, match=r"\.parquet or \.csv"):
        Dataset(other).scan()


def test_bad_placeholder_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="placeholder"):
        PromptTemplate("{text!r}").expr()
    with pytest.raises(ConfigError, match="prompt.template"):
        PromptTemplate("unclosed {text").expr()


def test_limit_takes_the_first_rows(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    pl.DataFrame({"text": [str(i) for i in range(10)]}).write_csv(src)
    ds = Dataset(src, limit=4)
    assert ds.count_rows() == 4
    rows = pl.concat(list(ds.batches(["text"], PromptTemplate("{text}").expr())))
    assert rows[PROMPT].to_list() == ["0", "1", "2", "3"]
