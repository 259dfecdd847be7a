"""The request log: one record per request, for tests and for reconciling a run against the server.

Records are appended on the server's event loop and read from other threads, hence the
condition. Keys appear only as fingerprints (:func:`fingerprint`), never raw.
"""

from __future__ import annotations

import hashlib
import json
import threading
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

__all__ = ["RequestLog", "fingerprint", "max_in_any_window"]


@lru_cache(maxsize=4096)
def fingerprint(key: str) -> str:
    """First 12 hex digits of sha256(key): tells keys apart without revealing them."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


class RequestLog:
    """An in-memory list of records, optionally mirrored to a JSON-lines file flushed per line."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._records: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._file: IO[str] | None = None

    def open(self) -> None:
        """Open the mirror file (appending); called when the server starts, not per request."""
        if self.path is not None and self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def append(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._file.flush()
        with self._changed:
            self._records.append(record)
            self._changed.notify_all()

    def snapshot(self) -> list[dict[str, Any]]:
        """A copy of every record so far."""
        with self._changed:
            return [dict(record) for record in self._records]

    def wait_for(self, n: int, timeout: float) -> bool:
        """Block until at least ``n`` records exist; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._records) >= n, timeout)

    def __len__(self) -> int:
        return len(self._records)


def max_in_any_window(times: list[float], window: float) -> int:
    """The largest number of events inside any half-open interval of length ``window``: what a
    server counting in windows of that length, aligned anywhere, would have seen at most."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best
