"""A CSV file a block of records at a time, each block parsed by polars.

Why not a library's reader: polars' CSV scan holds the whole file in memory whatever the engine
(a 174 MB, 3 M-row file: 323 MB of anonymous memory through ``collect_batches``, and counting its
rows maps all of it; pola-rs/polars#18724 and #13294 are the same limitation, open), and pyarrow's
streaming CSV reader parses by other rules (nulls, booleans, quoting) than the polars reader that
infers the job's schema and renders its prompts. So the file is cut here, at record boundaries,
and polars parses each block with the schema it inferred from the file's first rows.

A record ends at a newline outside quotes: with RFC 4180's quoting (a quote inside a quoted field
is doubled), a newline is outside quotes when the number of ``"`` before it, from the start of
the record, is even.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import polars as pl

BLOCK_BYTES = 4 << 20  # read at a time: ~60,000 short rows, ~30 MB while parsed


def last_record_end(data: bytes) -> int:
    """The index just past the last newline of ``data`` outside quotes (``data`` begins a record);
    -1 when there is none."""
    end = data.rfind(b"\n")
    if end < 0:
        return -1
    quotes = data.count(b'"', 0, end)
    while quotes % 2:  # inside a quoted field: try the newline before (rare: a field spanning lines)
        previous = data.rfind(b"\n", 0, end)
        if previous < 0:
            return -1
        quotes -= data.count(b'"', previous, end)
        end = previous
    return end + 1


def blocks(path: Path, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[bytes, bytes]]:
    """``(header, records)``: the file's header record and its next whole records, in order."""
    with path.open("rb") as f:
        rest, header = b"", None
        while True:
            chunk = f.read(block_bytes)
            data = rest + chunk
            cut = last_record_end(data) if chunk else len(data)
            if cut < 0:  # no record ends in it yet: read on
                rest = data
                continue
            if header is None:
                first = first_record_end(data)
                header, data, cut = data[:first], data[first:], cut - first
            if cut > 0 and data[:cut].strip():
                yield header, data[:cut]
            rest = data[cut:]
            if not chunk:
                return


def first_record_end(data: bytes) -> int:
    """The index just past the first record of ``data`` (the header), or its length."""
    start = 0
    while True:
        end = data.find(b"\n", start)
        if end < 0:
            return len(data)
        if data.count(b'"', 0, end) % 2 == 0:
            return end + 1
        start = end + 1


def frames(path: Path, schema: pl.Schema, block_bytes: int = BLOCK_BYTES) -> Iterator[pl.DataFrame]:
    """The file's rows in order, a block at a time, typed by ``schema`` (polars' inference)."""
    for header, records in blocks(path, block_bytes):
        yield pl.read_csv(io.BytesIO(header + records), schema=schema)
