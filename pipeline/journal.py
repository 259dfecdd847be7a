"""The ledger's journal: each write of a running job appended to a file, so that SQLite commits
every :data:`COMMIT_SECONDS` instead of once a call.

A SQLite commit appends an image of every page it changed to the write-ahead log: with a random
content key, a call's "sent" mark and its row's outcome touch three or four pages, ~14 KB and
~26 µs of CPU a row (``bench/ledger.py``; page size, ``WITHOUT ROWID`` and exclusive locking were
measured too, 28-52 µs). One ``write()`` of a line to a file opened for appending is as durable
against ``kill -9`` (the kernel holds it; a power cut can lose either, as ``synchronous=NORMAL``
allows) and costs ~3 µs. So while a job runs, each ledger write is appended here, then executed
in an open SQLite transaction (so the job's own reads see it at once); the ledger commits that
transaction every :data:`COMMIT_SECONDS` together with how far into the journal it reaches, and
opening the ledger for writing applies whatever the journal holds beyond that point.

No library offers this: SQLite's own log is the one we have, and what costs is its per-commit
page images, which no setting removes.

Files are ``journal-<generation>.log`` beside the database, one line a write: a JSON array
``[write, *arguments]``, then for a write that carries a record, a tab and the record's JSON. A
line cut short by a crash (no newline, not JSON) ends the replay.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

COMMIT_SECONDS = 0.05  # how often a running job's ledger commits what its journal holds
ROTATE_BYTES = 64 << 20  # past this, the next commit starts a new journal file and drops the old

_PREFIX, _SUFFIX = "journal-", ".log"
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class Journal:
    """One journal file, opened for appending."""

    def __init__(self, root: Path, generation: int) -> None:
        self.generation = generation
        self.path = root / f"{_PREFIX}{generation:08d}{_SUFFIX}"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.size = os.fstat(self._fd).st_size  # bytes in the file: the point a commit reaches
        self._pending: list[str] = []  # lines not written yet: they wait for a durable one

    def append(self, write: str, args: Sequence[Any], *, durable: bool, record: bool = False) -> None:
        """A line for ``write``; ``durable``: in the file when this returns, with the lines that
        waited for it, in one ``write()`` (raises ``OSError``, e.g. a full disk). ``record``: the
        last argument is JSON text already, kept as it is after a tab (not encoded again)."""
        # JSON text has no raw tab or newline: the record needs no escaping to share the line
        self._pending.append(f"{_encode([write, *args[:-1]])}\t{args[-1]}\n" if record
                             else f"{_encode([write, *args])}\n")
        if durable:
            self.write_pending()

    def write_pending(self) -> None:
        """The lines that wait, in one ``write()``. A write that fails may leave part of a line:
        nothing may be written after it (the ledger closes the journal and goes on without it)."""
        if not self._pending:
            return
        data = "".join(self._pending).encode()
        self._pending.clear()
        done = os.write(self._fd, data)
        while done < len(data):  # a short write: only ever seen with the disk filling up
            done += os.write(self._fd, data[done:])
        self.size += len(data)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def journals(root: Path) -> list[tuple[int, Path]]:
    """The journal files in ``root``, oldest first."""
    found = []
    for path in root.glob(f"{_PREFIX}*{_SUFFIX}"):
        try:
            found.append((int(path.name[len(_PREFIX):-len(_SUFFIX)]), path))
        except ValueError:
            continue
    return sorted(found)


def entries(path: Path, start: int) -> Iterator[tuple[str, list[Any]]]:
    """``(write, arguments)`` of each whole line of ``path`` from byte ``start``."""
    with open(path, "rb") as lines:
        lines.seek(start)
        for line in lines:
            if not line.endswith(b"\n"):
                return  # cut short by a crash: it was never acknowledged
            head, tab, record = line[:-1].partition(b"\t")
            try:
                write, *args = json.loads(head)
                if tab:
                    json.loads(record)  # whole, or the line was cut short
                    args.append(record.decode())
            except ValueError:
                return
            yield write, args
