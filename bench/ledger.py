"""``make bench``: CPU per recorded result, the SQLite ledger against the JSON lines it replaced.

    .venv/bin/python bench/ledger.py [--results 20000]

Each store records ``--results`` plain-row results the way a run does: one "sent" mark before
the call and one outcome after (the ledger outside a run: two autocommitted statements in WAL
mode, ``synchronous=NORMAL``; a run without its journal (once a full disk refused it): one
commit a row; a job's run, or a worker's shard in one: both appended to the journal, the
database committed every 50 ms; JSON lines: a flushed "started"
line and a flushed result line, as the store before the ledger did). The record is a typical answer (~600
characters). CPU time is this process's user + system time (``resource.getrusage``); the figure
is the median of three runs. The end size is the store's bytes on disk after it is closed.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pipeline.keys import Keyer
from pipeline.ledger import Ledger, _connect, ledger_dir
from pipeline.result import RowResult


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _result(i: int) -> RowResult:
    return RowResult(row=i, status="ok", response="the result depends on context " * 20, tokens_used=180,
                     cost=0.00036, request_id=f"req_{i:024x}", attempts=1, latency_ms=51.2,
                     finished_at=datetime.now(UTC))


def sqlite_ledger(root: Path, n: int) -> int:
    keyer = Keyer("momo", "https://api.momoai.pro/v1", "159", 0.2, 300)
    out = root / "out.parquet"
    with Ledger.open(out) as led:
        for i in range(n):
            key = keyer.row(f"Question {i}: what is the capital of France?")
            led.sent(key, 0.0)
            led.outcome(key, _result(i).to_record(), final=True, paid=0.00036, held=0.0)
    return sum(p.stat().st_size for p in ledger_dir(out).iterdir())


def sqlite_grouped(root: Path, n: int) -> int:
    """A run without its journal (as after a full disk refused it): each outcome joins the
    transaction the next "sent" mark commits, one commit a row. (A worker's shard writes as
    ``sqlite_journal`` does.)"""
    keyer = Keyer("momo", "https://api.momoai.pro/v1", "159", 0.2, 300)
    path = root / "shards" / "w.sqlite"
    Ledger.shard(path, run=1).close()  # the file, with its schema
    with Ledger(root, _connect(path), None, 1, path=path, writer=True) as led, led.grouping():
        for i in range(n):
            key = keyer.row(f"Question {i}: what is the capital of France?")
            led.sent(key, 0.0)
            led.outcome(key, _result(i).to_record(), final=True, paid=0.00036, held=0.0)
            led.commit()
    return sum(p.stat().st_size for p in (root / "shards").iterdir() if p.is_file())


def sqlite_journal(root: Path, n: int) -> int:
    """As a job's run writes: each write appended to the journal, the database committed every
    50 ms (``commit`` is what the runner calls each turn of the event loop)."""
    keyer = Keyer("momo", "https://api.momoai.pro/v1", "159", 0.2, 300)
    out = root / "out.parquet"
    with Ledger.open(out) as led, led.grouping():
        for i in range(n):
            key = keyer.row(f"Question {i}: what is the capital of France?")
            led.sent(key, 0.0)
            led.outcome(key, _result(i).to_record(), final=True, paid=0.00036, held=0.0)
            led.commit()
    return sum(p.stat().st_size for p in ledger_dir(out).iterdir())


def json_lines(root: Path, n: int) -> int:
    with (root / "starts.jsonl").open("a") as starts, (root / "results.jsonl").open("a") as results:
        for i in range(n):
            starts.write(f"{i}\n")
            starts.flush()
            record = {"__row": i, **_result(i).to_record()}
            results.write(json.dumps({k: v for k, v in record.items() if v is not None}, ensure_ascii=False) + "\n")
            results.flush()
    return sum(p.stat().st_size for p in root.iterdir())


def measure(store: Callable[[Path, int], int], n: int) -> tuple[float, int]:
    runs = []
    size = 0
    for _ in range(3):
        with tempfile.TemporaryDirectory(prefix="ledger-bench-") as name:
            cpu0 = _cpu()
            size = store(Path(name), n)
            runs.append(_cpu() - cpu0)
    return statistics.median(runs) / n * 1e6, size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", type=int, default=20_000)
    n = ap.parse_args().results
    print(f"\nrecording {n:,} results (sent mark + outcome each), median of 3 runs")
    print(f"{'store':<36}{'CPU µs/result':>15}{'size on disk':>16}")
    for name, store in (("SQLite ledger, a commit each", sqlite_ledger),
                        ("a run without journal: commit a row", sqlite_grouped),
                        ("a run: journal, commit each 50 ms", sqlite_journal),
                        ("JSON lines (before the ledger)", json_lines)):
        us, size = measure(store, n)
        print(f"{name:<36}{us:>15.1f}{size / 1e6:>13.1f} MB")


if __name__ == "__main__":
    main()
