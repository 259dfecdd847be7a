"""The plan's per-row keys on disk, so that memory does not grow with the input (issue 22).

A job of ten million rows has ten million content keys (32 hex digits each): held in memory they
were ~170 MB per million rows. :class:`KeySpill` writes them to a temporary Arrow IPC stream in
input order while the plan reads the input, and reads them back, a batch at a time, beside any
later pass over the input (the calls, the output). Arrow's IPC stream, read through a plain file
rather than a memory map, keeps what a pass holds to one batch.

Which row is the first to ask a request (dedup) needs every key the input has seen. The keys are
partitioned by their first hex digits into buckets of at most :data:`BUCKET_ROWS` rows, each its
own IPC stream; a bucket then fits in memory, and its first rows (by input position) are found
there. Within one plan batch only a key's first row is written to its bucket, so a prompt
repeated a million times costs a bucket one row per batch, not a million. What stays in memory
is one bit a row: whether the row is the first of its key.

With dedup off, the n-th repeat of a prompt is a request of its own: every row goes to its
bucket, each bucket counts its rows' earlier repeats (``OCC``), and the rows with any are kept
on disk in files of :data:`RANGE_ROWS` input rows, read back a range at a time.

Polars alone has no appendable IPC writer (``write_ipc_stream`` writes a whole stream a call)
and its streaming ``group_by`` keeps every distinct key in memory; pyarrow's ``RecordBatch``
stream writer and reader are used through their public API.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pyarrow as pa

from .errors import WriteError
from .keys import FIRST, KEY, OCC, repeat_key

BUCKET_ROWS = 250_000  # rows a bucket holds on average: ~20 MB while it is read
RANGE_ROWS = 250_000  # dedup off: the input rows whose repeat counts one file holds
ROW = "__spill_row"
PREFIX = "momo-batch-plan-"
# a folder this young may be one another process has made and not locked yet
LEFT_AFTER_SECONDS = 60.0


class _Stream:
    """An Arrow IPC stream file, appended a polars frame at a time (its schema: the first frame's)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sink: pa.OSFile | None = None
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None

    def write(self, frame: pl.DataFrame) -> None:
        table = frame.to_arrow()
        if self._writer is None:
            self._sink = pa.OSFile(str(self.path), "wb")
            self._writer = pa.ipc.new_stream(self._sink, table.schema)
        self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is not None and self._sink is not None:
            self._writer.close()
            self._sink.close()
            self._writer = self._sink = None

    def read_all(self) -> pl.DataFrame | None:
        """The whole stream (None: nothing was written), read by polars into its own memory."""
        return pl.read_ipc_stream(self.path) if self.path.exists() else None


def read_stream(path: Path) -> Iterator[pl.DataFrame]:
    """The frames of an IPC stream file, in order, one record batch at a time (no memory map)."""
    if not path.exists():
        return
    with pa.OSFile(str(path), "rb") as source:
        reader = pa.ipc.open_stream(source)
        for batch in reader:
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            yield frame


class KeySpill:
    """Every row's key (and repeat count), in input order, on disk; whether each row is the first
    of its key, in memory (a bit a row). Build with :meth:`write` for each plan batch, then
    :meth:`seal`; read with :meth:`aligned`. Temporary files go under ``TMPDIR``."""

    def __init__(self, expected_rows: int, *, dedup: bool) -> None:
        """``expected_rows``: about how many rows will be written (it sizes the buckets)."""
        sweep_left_folders(Path(tempfile.gettempdir()))
        try:
            root = self._root = Path(tempfile.mkdtemp(prefix=PREFIX))
            owner = _hold(root)
        except OSError as exc:
            raise WriteError(f"{tempfile.gettempdir()}: cannot make the plan's temporary folder "
                             f"({exc.strerror or exc}); set TMPDIR to a writable folder") from None
        # removed by close(), else when the spill is garbage-collected or the interpreter exits;
        # a process killed before either leaves it to the next plan's sweep
        self._cleanup = weakref.finalize(self, _remove, root, owner)
        self._keys = _Stream(root / "keys.arrows")
        self._dedup = dedup
        self._n_buckets = max(1, math.ceil(expected_rows / BUCKET_ROWS))
        self._buckets = [_Stream(root / f"bucket-{b}.arrows") for b in range(self._n_buckets)]
        self._repeats: dict[int, _Stream] | None = None  # dedup off: ROW, OCC of rows that repeat one before
        self._first: pl.Series | None = None
        self.rows = 0
        self.sendable = 0
        self.distinct = 0

    def write(self, keys: pl.Series) -> None:
        """The next rows' ``KEY`` (null: nothing to send), in input order. (Their ``OCC``, with
        dedup off, is counted when the spill is sealed.)"""
        with self._disk():
            self._add(keys.cast(pl.String).alias(KEY))

    def _add(self, keys: pl.Series) -> None:
        self._keys.write(keys.to_frame())
        sent = keys.len() - keys.null_count()
        if sent:
            rows = pl.DataFrame([pl.int_range(self.rows, self.rows + keys.len(), dtype=pl.UInt32, eager=True)
                                 .alias(ROW), keys]).filter(pl.col(KEY).is_not_null())
            if self._dedup:  # a key's first row of the batch is enough to find its first of all
                rows = rows.filter(pl.col(KEY).is_first_distinct())
            bucket = pl.col(KEY).str.slice(0, 6).str.to_integer(base=16) % self._n_buckets
            for (b,), part in rows.with_columns(bucket.alias("__b")).partition_by("__b", as_dict=True).items():
                self._buckets[int(b)].write(part.drop("__b"))
        self.rows += keys.len()
        self.sendable += sent

    def seal(self) -> None:
        """After the last batch: find each key's first row, bucket by bucket."""
        with self._disk():
            self._seal()

    @contextlib.contextmanager
    def _disk(self) -> Iterator[None]:
        """A full or failing disk under ``TMPDIR`` is said as such (exit 9), naming the folder."""
        try:
            yield
        except OSError as exc:
            raise WriteError(f"{self._root}: cannot write the plan's temporary files ({exc.strerror or exc}); "
                             "free some space there, or set TMPDIR to a disk that has it") from None

    def _seal(self) -> None:
        self._keys.close()
        if not self._dedup:
            self._count_repeats()
            self.distinct = self.sendable  # every repeat is a request of its own
            return
        first = pl.zeros(self.rows, pl.Boolean, eager=True)
        for bucket in self._read_buckets():
            rows = bucket.filter(pl.col(KEY).is_first_distinct())[ROW]
            del bucket
            self.distinct += rows.len()
            first = first.scatter(rows, True)
        self._first = first

    def _read_buckets(self) -> Iterator[pl.DataFrame]:
        """Each bucket's rows in input order, one bucket in memory at a time (its file then goes)."""
        for stream in self._buckets:
            stream.close()
            bucket = stream.read_all()
            stream.path.unlink(missing_ok=True)
            if bucket is not None:
                yield bucket

    def _count_repeats(self) -> None:
        """Dedup off: how many earlier rows ask each row's prompt (``OCC``), found bucket by bucket
        (a bucket holds every row of its keys) and kept only where it is not 0, in files of
        :data:`RANGE_ROWS` input rows each, so a later pass reads the range it is in."""
        self._repeats = {}
        for bucket in self._read_buckets():
            repeats = bucket.with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).over(KEY).alias(OCC)) \
                .filter(pl.col(OCC) > 0).select(ROW, OCC)
            del bucket
            by_range = repeats.with_columns((pl.col(ROW) // RANGE_ROWS).alias("__r"))
            for (r,), part in by_range.partition_by("__r", as_dict=True).items():
                stream = self._repeats.setdefault(int(r), _Stream(self._root / f"repeats-{r}.arrows"))
                stream.write(part.drop("__r"))
        for stream in self._repeats.values():
            stream.close()

    def aligned(self) -> _Aligned:
        """A reader of the rows' ``KEY``, ``FIRST`` and ``OCC``, taken in input order, any number at a time."""
        repeats = None if self._repeats is None else _Repeats(self._repeats)
        return _Aligned(read_stream(self._root / "keys.arrows"), self._first, repeats)

    def read(self) -> pl.DataFrame:
        """Every row's ``KEY``, ``FIRST`` and ``OCC`` at once: for small inputs (tests, notebooks)."""
        return self.aligned().take(self.rows)

    def close(self) -> None:
        self._cleanup()


def _hold(folder: Path) -> int:
    """An exclusive ``flock`` on the folder itself, held while its plan lives (it dies with the process)."""
    fd = os.open(folder, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a folder just made: nobody else holds it
    return fd


def _remove(folder: Path, owner: int) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    os.close(owner)


def sweep_left_folders(tmp: Path) -> None:
    """Remove the plan folders that processes killed mid-plan (``kill -9``, the OOM killer) left
    under ``tmp``: a folder whose lock is free has no live owner. A folder holds about 50 bytes
    an input row (~500 MB at 10 M rows), so a few such kills would fill a disk. Folders younger than
    :data:`LEFT_AFTER_SECONDS` are left alone (one may be in the instant between its ``mkdtemp``
    and its lock)."""
    with contextlib.suppress(OSError):
        for folder in tmp.glob(f"{PREFIX}*"):
            with contextlib.suppress(OSError):
                if time.time() - folder.stat().st_mtime < LEFT_AFTER_SECONDS:
                    continue
                fd = os.open(folder, os.O_RDONLY)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    shutil.rmtree(folder, ignore_errors=True)
                except BlockingIOError:
                    pass  # its plan is alive
                finally:
                    os.close(fd)


class InputChanged(Exception):
    """The input is not what the plan read (edited while the job ran)."""


class _Repeats:
    """Dedup off: each row's ``OCC``, read a range of input rows at a time (0 where no file says more)."""

    def __init__(self, streams: dict[int, _Stream]) -> None:
        self._streams = streams
        self._loaded: dict[int, pl.DataFrame] = {}

    def occ(self, offset: int, n: int) -> pl.Series:
        out = pl.zeros(n, pl.UInt32, eager=True)
        if n == 0:
            return out
        for r in range(offset // RANGE_ROWS, (offset + n - 1) // RANGE_ROWS + 1):
            frame = self._range(r)
            if frame is None:
                continue
            part = frame.filter(pl.col(ROW).is_between(offset, offset + n - 1))
            out = out.scatter(part[ROW] - offset, part[OCC])
        return out

    def _range(self, r: int) -> pl.DataFrame | None:
        """Range ``r``'s repeats (reads go forward: the ranges before it are let go)."""
        for old in [k for k in self._loaded if k < r]:
            del self._loaded[old]
        if r not in self._loaded and r in self._streams and (frame := self._streams[r].read_all()) is not None:
            self._loaded[r] = frame
        return self._loaded.get(r)


class _Aligned:
    """Takes the spill's rows in order, as many as the next batch of another pass over the input has."""

    def __init__(self, frames: Iterator[pl.DataFrame], first: pl.Series | None,
                 repeats: _Repeats | None = None) -> None:
        self._frames = frames
        self._first = first  # None: dedup off, every row is its own request
        self._repeats = repeats  # dedup off: the rows' OCC, and with it their keys
        self._buffer: pl.DataFrame = pl.DataFrame(schema={KEY: pl.String})
        self._offset = 0

    def take(self, n: int) -> pl.DataFrame:
        parts, need = [], n
        while need:
            if not self._buffer.height:
                frame = next(self._frames, None)
                if frame is None:
                    raise InputChanged("the input has more rows than when the run began")
                self._buffer = frame
            part = self._buffer.head(need)
            self._buffer = self._buffer.slice(part.height)
            parts.append(part)
            need -= part.height
        keys = pl.concat(parts) if parts else self._buffer.head(0)
        keys = (keys.with_columns(pl.zeros(n, pl.UInt32, eager=True).alias(OCC)) if self._repeats is None
                else _repeated(keys, self._repeats.occ(self._offset, n)))
        first = (pl.repeat(True, n, dtype=pl.Boolean, eager=True).alias(FIRST) if self._first is None
                 else self._first.slice(self._offset, n).alias(FIRST))
        self._offset += n
        return keys.with_columns(first | keys[KEY].is_null()).select(KEY, FIRST, OCC)


def _repeated(keys: pl.DataFrame, occ: pl.Series) -> pl.DataFrame:
    """The n-th repeat of a prompt (dedup off) is a request of its own, with a key of its own."""
    rows = (occ > 0).arg_true()
    keys = keys.with_columns(occ.alias(OCC))
    if not rows.len():
        return keys
    repeats = [repeat_key(k, n) for k, n in zip(keys[KEY].gather(rows).to_list(), occ.gather(rows).to_list(),
                                                 strict=True)]
    return keys.with_columns(keys[KEY].scatter(rows, pl.Series(repeats, dtype=pl.String)))
