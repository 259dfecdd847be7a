"""Read a prompt dataset (Parquet or CSV) lazily, in batches, and render each row's prompt.

Nothing here loads a whole file: schemas come from the file footer / CSV header, counts from a
streaming ``select(len())``, rows from :meth:`Dataset.frames`, a batch at a time. Every problem is a
:class:`~pipeline.errors.ConfigError` naming the file and, where it applies, the column.
"""

from __future__ import annotations

import csv
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from . import csv_blocks
from .errors import ConfigError

ROW = "__row"  # position of a row in the input, for this run only (rows find results by content key)
PROMPT = "__prompt"


@dataclass(frozen=True)
class PromptTemplate:
    """``"Summarise: {text}"``: literal text with ``{column}`` placeholders (``{{`` for a brace)."""

    template: str

    @property
    def columns(self) -> list[str]:
        return [name for _, name, _, _ in self._parts() if name is not None]

    def _parts(self) -> list[tuple[str, str | None, str | None, str | None]]:
        try:
            return list(string.Formatter().parse(self.template))
        except ValueError as exc:
            raise ConfigError(f"prompt.template: {exc}") from None

    def expr(self) -> pl.Expr:
        """A polars expression rendering the prompt; null when any named column is null."""
        pieces: list[pl.Expr] = []
        for literal, name, spec, conv in self._parts():
            if literal:
                pieces.append(pl.lit(literal))
            if name is not None:
                if not name or spec or conv:
                    raise ConfigError(
                        f"prompt.template: placeholders must be plain column names, got {{{name}}}"
                    )
                pieces.append(pl.col(name).cast(pl.String))
        return pl.concat_str(pieces or [pl.lit("")]).alias(PROMPT)

    def render(self, row: dict[str, object]) -> str | None:
        """Render one row (for notebooks and the estimator's samples)."""
        values = {c: row.get(c) for c in self.columns}
        if any(v is None for v in values.values()):
            return None
        return self.template.format(**{k: str(v) for k, v in values.items()})


@dataclass(frozen=True)
class Dataset:
    """A prompt dataset on disk."""

    path: Path
    id_column: str | None = None
    limit: int | None = None  # only the first ``limit`` rows (``run --limit``)

    def scan(self) -> pl.LazyFrame:
        """The file as a lazy frame, with its row position in :data:`ROW`."""
        lf = self._source().with_row_index(ROW)
        return lf.head(self.limit) if self.limit is not None else lf

    def _source(self) -> pl.LazyFrame:
        suffix = self.path.suffix.lower()
        if not self.path.exists():
            raise ConfigError(f"{self.path}: input file not found")
        try:
            if suffix == ".parquet":
                return pl.scan_parquet(self.path)
            if suffix == ".csv":
                self._not_parquet()
                return pl.scan_csv(self.path, infer_schema_length=10_000)
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise self._unreadable(exc) from None
        raise ConfigError(f"{self.path}: input must be .parquet or .csv")

    def frames(self, query: Callable[[pl.LazyFrame], pl.LazyFrame] = lambda lf: lf, *,
               batch_rows: int = 4096) -> Iterator[pl.DataFrame]:
        """The input's rows in order with :data:`ROW`, through ``query`` (a select or with_columns),
        ``batch_rows`` at a time; memory is one batch.

        A Parquet file is read a slice at a time (the reader skips to the slice's row groups):
        ``collect_batches`` runs ahead of a slow consumer and would hold the whole file (3 M rows:
        290 MB against 95 MB by slices). A CSV file a block of records at a time
        (:mod:`pipeline.csv_blocks`: polars' own CSV reader holds the whole file).
        """
        try:
            for start, rows in self._slices(batch_rows):
                yield query(rows.with_row_index(ROW, offset=start)).collect()
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise self._unreadable(exc, ragged=True) from None

    def _slices(self, batch_rows: int) -> Iterator[tuple[int, pl.LazyFrame]]:
        """``(position of its first row, rows)`` in order, ``batch_rows`` at a time, the first
        ``limit`` rows only. A Parquet slice stays lazy, so a query reads only its columns."""
        if self.path.suffix.lower() == ".parquet":
            total = self.count_rows()
            for start in range(0, total, batch_rows):
                yield start, self._source().slice(start, min(batch_rows, total - start))
            return
        start, end = 0, self.limit
        for block in csv_blocks.frames(self.path, self._source().collect_schema()):
            for part in (block if end is None else block.head(end - start)).iter_slices(batch_rows):
                yield start, part.lazy()
                start += part.height
            if start == end:
                return

    def schema(self) -> pl.Schema:
        try:
            schema = self.scan().collect_schema()
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise self._unreadable(exc) from None
        if len(schema) <= 1:
            raise ConfigError(f"{self.path}: input has no columns (empty file?)")
        return schema

    def count_rows(self) -> int:
        """Rows in the input (the first ``limit`` at most): a Parquet file's footer says; a CSV
        file is parsed for it, a block at a time (polars' own count maps the whole file)."""
        try:
            if self.path.suffix.lower() == ".parquet":
                rows = int(self._source().select(pl.len()).collect().item())
            else:
                rows = sum(f.height for f in csv_blocks.frames(self.path, self._source().collect_schema()))
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise self._unreadable(exc, ragged=True) from None
        return rows if self.limit is None else min(rows, self.limit)

    def size_hint(self) -> int:
        """About as many rows as there are, without reading a CSV file through (to size work by):
        a Parquet file's count; a CSV file's bytes over :data:`CSV_ROW_BYTES`."""
        if self.path.suffix.lower() == ".parquet":
            return self.count_rows()
        try:
            hint = self.path.stat().st_size // CSV_ROW_BYTES + 1
        except OSError as exc:
            raise self._unreadable(exc) from None
        return hint if self.limit is None else min(hint, self.limit)

    def has_rows(self) -> bool:
        """Whether the input has a row: a CSV file's first block says."""
        if self.path.suffix.lower() == ".parquet":
            return self.count_rows() > 0
        return next(self.frames(batch_rows=1), None) is not None

    def check_columns(self, needed: list[str]) -> pl.Schema:
        """Fail before any paid call when a column the job names is missing."""
        schema = self.schema()
        have = [c for c in schema.names() if c != ROW]
        for column in needed:
            if column not in have:
                raise ConfigError(
                    f"{self.path}: column {_excerpt(column)} is named by the job but the file has only "
                    f"{_names(have)}"
                )
        if not self.has_rows():
            raise ConfigError(f"{self.path}: input has no rows")
        return schema

    def batches(self, columns: list[str], prompt: pl.Expr, *, batch_rows: int = 4096) -> Iterator[pl.DataFrame]:
        """Batches of ``[ROW, *columns, PROMPT]`` in input order; memory is one batch at a time.

        A CSV file's every column is parsed, not just those the prompt reads, so a ragged line or
        a value that does not fit its column fails in the first pass (the plan's, before any paid
        call) rather than when the output is written. A Parquet file's other columns are typed.
        """
        wanted = [pl.col(ROW), *(pl.col(c) for c in columns), prompt]
        return self.frames(lambda lf: lf.select(wanted), batch_rows=batch_rows)

    def _not_parquet(self) -> None:
        """A Parquet file named ``.csv`` would be read as text: its bytes would become column names."""
        try:
            with self.path.open("rb") as f:
                magic = f.read(4)
        except OSError:
            return  # polars says what is wrong
        if magic == b"PAR1":
            raise ConfigError(f"{self.path}: this is a Parquet file (it starts with PAR1), named .csv: "
                              "rename it to .parquet")

    def _unreadable(self, exc: BaseException, *, ragged: bool = False) -> ConfigError:
        """The one message for an input that cannot be read; ``ragged``: say where a CSV's line
        has more fields than its header (after a parse that read the rows)."""
        hint = self._ragged_hint() if ragged else ""
        return ConfigError(f"{self.path}: cannot read input ({_first_line(exc)}{hint})")

    def _ragged_hint(self) -> str:
        """Where a CSV first has a line with another number of fields than its header (error path only)."""
        if self.path.suffix.lower() != ".csv":
            return ""
        try:
            with self.path.open(newline="", encoding="utf-8", errors="replace") as f:
                reader = csv.reader(f)
                width = len(next(reader, []))
                for record in reader:
                    if record and len(record) > width:
                        return (f"; line {reader.line_num} has {len(record)} fields, the header {width}: "
                                "quote values that contain commas")
        except (OSError, csv.Error):
            pass
        return ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return _printable(text.splitlines()[0], 200) if text else type(exc).__name__


CSV_ROW_BYTES = 16  # the shortest rows a CSV's size_hint expects: fewer bytes a row, more rows than hinted
EXCERPT = 40  # characters of a value from the file that a message quotes, at most
NAMES = 12  # column names a message lists, at most


def _printable(text: str, limit: int = EXCERPT) -> str:
    """``text`` with what a terminal cannot show replaced by "?", cut to ``limit`` characters: a
    message quotes a bad file's bytes as a short excerpt, never whole."""
    shown = "".join(ch if ch.isprintable() else "?" for ch in text)
    return shown if len(shown) <= limit else shown[:limit - 1] + "…"


def _excerpt(name: str) -> str:
    return repr(_printable(name))


def _names(names: list[str]) -> str:
    listed = ", ".join(_excerpt(n) for n in names[:NAMES])
    return listed + (f" and {len(names) - NAMES} more" if len(names) > NAMES else "")
