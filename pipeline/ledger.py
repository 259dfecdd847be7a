"""The ledger: every request of a job, by what it asks, in one SQLite file beside the output.

A row finds its result through its content key (:mod:`pipeline.keys`), never its position, so
an edited input reruns exactly the requests that are new. One table, ``entries``:

====== ==================================================================================
key    hex content key: a call's request key, or a row's key (a plain row: the same key)
state  0 sent, outcome unknown · 1 a call's answer · 2 a row's final outcome ·
       3 a row's outcome worth retrying (a transient error)
run    the run that wrote it (``runs`` table: when, which process)
cost   what the job paid for this entry's call(s), counted once: the job's spend is ``SUM(cost)``
held   worst cases held for sends whose outcome is unknown (may have been charged)
record JSON: a call's answer (state 1) or the row's output columns (states 2, 3)
====== ==================================================================================

Why SQLite (standard library, WAL mode): a per-call lookup by key and a per-batch join at the
end need an index, which JSON lines do not have; a committed transaction survives ``kill -9``
at any instant (WAL, ``synchronous=NORMAL``); readers (``estimate``, a user's ``sqlite3``) do
not block the writer. It costs more CPU per result than the JSON lines it replaces (measured by
``bench/ledger.py``; see the README), which buys the index. A rowid table with a unique key is
used, not ``WITHOUT ROWID``: answers are large rows, and random keys split pages of a table
clustered on them (~30 % more CPU per result here).

One writer per job: :class:`Ledger` holds an exclusive ``flock`` on ``lock`` beside the
database while it is open; the lock dies with its process, so ``kill -9`` needs no clean-up.

While a job's run writes (:meth:`_Store.grouping`), each write goes to the journal first
(:mod:`pipeline.journal`) and the database commits every 50 ms. A worker's shard of a distributed
run does the same, with its journal in a folder of its own beside it (:func:`shard_journal`,
which also holds the worker's lock); what a killed worker journaled is applied to its shard by
whoever finds the lock free first (another worker on its machine, or the driver before it merges
the shard: :func:`take_over_journal`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
import sqlite3
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import polars as pl

from .errors import JobBusy, WriteError
from .journal import COMMIT_SECONDS, ROTATE_BYTES, Journal, entries, journals

SENT, ANSWER, FINAL, RETRY = 0, 1, 2, 3
DB_NAME = "ledger.sqlite"
LOCK_NAME = "lock"
# SQLite's default limit on bound parameters is 32766; lookups go in chunks well below it
CHUNK = 8_192

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key    TEXT NOT NULL UNIQUE,
    state  INTEGER NOT NULL,
    run    INTEGER NOT NULL,
    cost   REAL NOT NULL DEFAULT 0,
    held   REAL NOT NULL DEFAULT 0,
    record TEXT
);
CREATE TABLE IF NOT EXISTS runs (
    run        INTEGER PRIMARY KEY,
    started_at TEXT NOT NULL,
    pid        INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS merged (
    shard TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS journal (
    generation INTEGER NOT NULL,
    applied    INTEGER NOT NULL
);
"""
CHECKPOINT_SECONDS = 0.5  # how often the log is copied into the database file (see Checkpointer)
SHARDS = "shards"  # workers of a distributed run write here, one file each (see :meth:`Ledger.shard`)
# how final an entry is, for merging the same key from several files: an outcome beats an answer,
# an answer beats a transient error, anything beats "sent"
_RANK = "(CASE {0} WHEN 2 THEN 3 WHEN 1 THEN 2 WHEN 3 THEN 1 ELSE 0 END)"


def ledger_dir(output: Path) -> Path:
    return output.with_name(output.name + ".ledger")


@dataclass(frozen=True)
class Entry:
    state: int
    run: int
    record: dict[str, Any] | None


@dataclass(frozen=True)
class LedgerTotals:
    """What earlier runs left that the money side must know."""

    spent: float  # SUM(cost) + SUM(held): every cent the job may have been charged
    unknown: int  # sends whose outcome is unknown (in flight when a run died)


def _connect(path: Path, *, readonly: bool = False, immutable: bool = False) -> sqlite3.Connection:
    """``immutable``: read a file nobody writes while it is open, with no lock and no shared memory
    (safe on a network filesystem: how workers on other machines read the job's ledger)."""
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    uri += "&immutable=1" if readonly and immutable else ""
    db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=10)
    if not readonly:
        db.execute("PRAGMA journal_mode=WAL")
        # a commit is in the OS once write() returns: survives kill -9 of this process (not a
        # power cut, which would need FULL and an fsync per result)
        db.execute("PRAGMA synchronous=NORMAL")
        # the writer never checkpoints inside a commit: a :class:`Checkpointer` does, beside it
        db.execute("PRAGMA wal_autocheckpoint=0")
    return db


class Checkpointer:
    """Copies the write-ahead log into the database file from a thread and connection of its own.

    SQLite's automatic checkpoint runs inside the commit that takes the log past 1,000 pages, on
    the writer's thread, which here is the event loop: every few hundred results every call in
    flight stalled while megabytes were copied (``bench/run.py``, 64 in flight at 50 ms: 1,110
    rows/s between the first and the last call, 1,200 without). A ``PASSIVE`` checkpoint from
    another connection never blocks the writer, and ``sqlite3`` lets go of the GIL while it works.
    What a commit makes durable does not change: the commit writes the log either way.
    """

    def __init__(self, path: Path, interval: float | None = None) -> None:
        self.interval = CHECKPOINT_SECONDS if interval is None else interval
        self.passes = 0  # checkpoints done
        self.done = threading.Event()  # set after each pass (tests wait on it)
        self._db = sqlite3.connect(f"file:{path}", uri=True, isolation_level=None, check_same_thread=False,
                                   timeout=10)
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"checkpoint {path.name}")
        self._thread.start()

    def request(self) -> None:
        """A pass now, not at the end of the interval."""
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._closing:
                return
            with contextlib.suppress(sqlite3.Error):  # a busy moment: the next pass catches up
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self.passes += 1
            self.done.set()

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        self._thread.join()
        with contextlib.suppress(sqlite3.Error):
            self._db.close()


class _Store:
    """The parts a ledger and a cache share: a connection and guarded writes."""

    db: sqlite3.Connection
    path: Path
    checkpointer: Checkpointer | None = None

    def _checkpoint_beside(self) -> None:
        self.checkpointer = Checkpointer(self.path)

    # Group commit. A commit appends the pages it changed to the write-ahead log in a write() of
    # its own; a run made two a row (the call's "sent" mark, then the row's outcome). While
    # ``grouped``, an outcome is written into an open transaction that the next "sent" mark (which
    # must be durable before its call goes out) or :meth:`commit` closes: one commit a row, and
    # fewer when several rows finish in one turn of the event loop (bench/ledger.py). A job's
    # ledger with its journal open goes further (see ``Ledger._record``): no commit a row at all.
    grouped: bool = False
    abandoned = 0  # transactions rolled back after a failed write: what they held is lost

    def _write(self, sql: str, args: Sequence[Any] | Iterable[Sequence[Any]], *, many: bool = False,
               durable: bool = True) -> None:
        """``durable``: committed before this returns; otherwise, while :attr:`grouped`, left for
        the next commit (readers on this connection see it at once)."""
        try:
            if not durable and self.grouped and not self.db.in_transaction:
                self.db.execute("BEGIN")
            if many:
                self.db.executemany(sql, args)  # type: ignore[arg-type]
            else:
                self.db.execute(sql, args)  # type: ignore[arg-type]
            if durable and self.db.in_transaction:
                self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._cannot_record(exc) from None

    def commit(self) -> None:
        """Make every write so far durable (a no-op when nothing waits for a commit)."""
        if not self.db.in_transaction:
            return
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._cannot_record(exc) from None

    def flush(self) -> None:
        """Everything written so far in the database (here the same as :meth:`commit`)."""
        self.commit()

    @contextlib.contextmanager
    def grouping(self) -> Iterator[None]:
        """Group commits (see :attr:`grouped`) for the length of a run; what is left is committed
        at the end. A failed commit loses the outcomes it held, as a crash would: their calls'
        "sent" marks are durable, so a resume sends them again and counts them as resent."""
        self.grouped = True
        try:
            yield
        finally:
            self.grouped = False
            self.flush()

    def _cannot_record(self, exc: sqlite3.Error) -> WriteError:
        self._abandon()
        return WriteError(_cannot_record_message(self.path, exc))

    def _abandon(self) -> None:
        if self.db.in_transaction:
            self.abandoned += 1
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")

    def close(self) -> None:
        self._stop_checkpoints()
        with contextlib.suppress(sqlite3.Error):
            self.db.close()

    def _stop_checkpoints(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.close()
            self.checkpointer = None


class Ledger(_Store):
    """The job's record of every request and row outcome. Open it with :meth:`open`."""

    def __init__(self, root: Path, db: sqlite3.Connection, lock: int | None, run: int, *,
                 path: Path | None = None, writer: bool = False, journal: Journal | None = None) -> None:
        self.root = root
        self.path = path or root / DB_NAME
        self.db = db
        self._lock = lock
        self.run = run
        self._journal = journal  # the job's ledger and a worker's shard have one; a view does not
        self._applying = True  # False once the database refused a write: the journal alone then
        self._committed_at = time.monotonic()
        self._writer = writer or lock is not None
        if writer:  # the job's ledger, or a worker's shard: not a view of someone else's
            self._checkpoint_beside()

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, output: Path, *, restart: bool = False) -> Ledger:
        """Take the job's lock (or raise :class:`JobBusy`) and open its ledger for writing."""
        root = ledger_dir(output)
        root.mkdir(parents=True, exist_ok=True)
        lock = _take_lock(root / LOCK_NAME)
        try:
            if restart:
                for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm"):
                    (root / name).unlink(missing_ok=True)
                for _, path in journals(root):
                    path.unlink()
                shutil.rmtree(root / SHARDS, ignore_errors=True)
            db = _connect(root / DB_NAME)
            db.executescript(_SCHEMA)
            journal = _apply_journals(db, root)
            cur = db.execute("INSERT INTO runs(started_at, pid) VALUES (?, ?)",
                             (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), os.getpid()))
            assert cur.lastrowid is not None
            return cls(root, db, lock, cur.lastrowid, writer=True, journal=journal)
        except (sqlite3.Error, OSError) as exc:
            os.close(lock)
            raise WriteError(f"{root / DB_NAME}: cannot open the ledger ({exc})") from None
        except BaseException:
            os.close(lock)
            raise

    @classmethod
    def shard(cls, path: Path, run: int) -> Ledger:
        """A worker's own file in a distributed run, written by that process alone (its name is
        unique to it); entries carry the driver's ``run``. It writes through a journal as the
        job's ledger does, and holds the lock in the journal's folder while it lives: a free lock
        says the writer is gone and its journal may be applied (:func:`take_over_journal`)."""
        folder = shard_journal(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():  # made aside, then renamed: other workers read every *.sqlite here
                draft = path.with_name(f".{path.name}.new")
                made = _connect(draft)
                made.executescript(_SCHEMA)
                made.close()
                os.replace(draft, path)
            # after the database: a folder never stands without its shard
            folder.mkdir(exist_ok=True)
            lock = _take_lock(folder / LOCK_NAME)
        except (sqlite3.Error, OSError) as exc:
            raise WriteError(f"{path}: cannot open the ledger shard ({exc})") from None
        try:
            db = _connect(path)
            journal = _apply_journals(db, folder)
        except (sqlite3.Error, OSError) as exc:
            os.close(lock)
            raise WriteError(f"{path}: cannot open the ledger shard ({exc})") from None
        return cls(path.parent, db, lock, run, path=path, writer=True, journal=journal)

    def fold(self) -> None:
        """Fold the write-ahead log into the database file, for readers that open it immutable."""
        self.flush()
        try:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            raise WriteError(f"{self.path}: cannot write the ledger ({exc})") from None

    def shards(self) -> list[Path]:
        """Worker shards beside this ledger that are not merged into it yet."""
        folder = self.root / SHARDS
        done = {name for (name,) in self.db.execute("SELECT shard FROM merged")}
        return sorted(p for p in folder.glob("*.sqlite") if p.name not in done) if folder.is_dir() else []

    def absorb(self, shard: Path) -> None:
        """Merge a worker's shard into this ledger, once (a crash after the merge and before the
        file is removed does not count it twice), then remove the shard's files. What its journal
        holds beyond its database is applied to it first. A shard whose writer still lives (Ray
        ends a pool's workers after the last batch, not before) is merged when its database holds
        its whole journal (a worker commits before it returns a batch), else left for the next run."""
        self.flush()
        try:
            if not take_over_journal(shard) and not _journal_applied(shard):
                return
        except (sqlite3.Error, OSError) as exc:
            raise WriteError(f"{shard}: cannot apply the ledger shard's journal ({exc})") from None
        try:
            self.db.execute("ATTACH DATABASE ? AS shard", (f"file:{shard}",))
        except sqlite3.Error:  # an empty or torn file: nothing was recorded in it
            _remove_db(shard)
            return
        try:
            self.db.execute("BEGIN IMMEDIATE")
            if self.db.execute("SELECT 1 FROM merged WHERE shard = ?", (shard.name,)).fetchone() is None:
                newer = _RANK.format("excluded.state") + " >= " + _RANK.format("state")
                self.db.execute(
                    "INSERT INTO entries(key, state, run, cost, held, record) "
                    "SELECT key, state, run, cost, held, record FROM shard.entries WHERE true "
                    "ON CONFLICT(key) DO UPDATE SET cost = cost + excluded.cost, held = held + excluded.held, "
                    f"state = CASE WHEN {newer} THEN excluded.state ELSE state END, "
                    f"run = CASE WHEN {newer} THEN excluded.run ELSE run END, "
                    f"record = CASE WHEN {newer} THEN COALESCE(excluded.record, record) ELSE record END")
                self.db.execute("INSERT INTO merged(shard) VALUES (?)", (shard.name,))
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            raise WriteError(f"{shard}: cannot merge the ledger shard ({exc})") from None
        finally:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("DETACH DATABASE shard")
        shutil.rmtree(shard_journal(shard), ignore_errors=True)  # first: a folder never outlives its shard
        _remove_db(shard)

    @classmethod
    def peek(cls, output: Path) -> Ledger | None:
        """Read-only, without the lock (``estimate``): ``None`` when the job never ran. A run that
        died left its last results in its journal: they are applied first, unless a run is on
        (which applied them when it opened)."""
        path = ledger_dir(output) / DB_NAME
        if not path.exists():
            return None
        if journals(path.parent):
            cls._apply_left_journals(path.parent)
        try:
            db = _connect(path, readonly=True)
            db.execute("SELECT 1 FROM entries LIMIT 1").fetchall()  # errors here, not in the caller's read
        except sqlite3.Error as exc:  # a full disk (no room for its shared memory), an I/O error
            raise WriteError(f"{path}: cannot read the ledger ({exc})") from None
        return cls(path.parent, db, None, 0)

    @classmethod
    def _apply_left_journals(cls, root: Path) -> None:
        try:
            lock = _take_lock(root / LOCK_NAME)
        except (JobBusy, OSError):  # a run is on: what it reads is its own business
            return
        try:
            db = _connect(root / DB_NAME)
            db.executescript(_SCHEMA)
            journal = _apply_journals(db, root)
        except (sqlite3.Error, OSError):  # the reader goes on with what the database has
            os.close(lock)
            return
        cls(root, db, lock, 0, journal=journal).close()  # the new, empty journal goes too

    def close(self) -> None:
        """Fold the write-ahead log into the database (no ``-wal`` file left), drop the journal
        once the database holds it all, and unlock."""
        with contextlib.suppress(WriteError):  # a run commits its own writes (see grouping)
            self.flush()
        if self._journal is not None:
            if self._applying:
                self._journal.remove()
            else:  # the database refused some of it: the next open applies it
                self._journal.close()
            self._journal = None
        if self._writer:  # a view of a worker's shard is not its to fold
            self._stop_checkpoints()
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        super().close()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        row = self.db.execute("SELECT state, run, record FROM entries WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return Entry(row[0], row[1], json.loads(row[2]) if row[2] else None)

    def states(self, keys: Sequence[str]) -> dict[str, tuple[int, int]]:
        """``key → (state, run)`` for those of ``keys`` that have an entry."""
        found: dict[str, tuple[int, int]] = {}
        for part in _chunks(list(dict.fromkeys(keys))):
            marks = ",".join("?" * len(part))
            for key, state, run in self.db.execute(
                    f"SELECT key, state, run FROM entries WHERE key IN ({marks})", part):
                found[key] = (state, run)
        return found

    def outcomes(self, keys: Sequence[str]) -> pl.DataFrame:
        """``[key, state, record]`` of the row outcomes (states 2 and 3) among ``keys``."""
        rows: list[tuple[str, int, str]] = []
        for part in _chunks(list(dict.fromkeys(keys))):
            marks = ",".join("?" * len(part))
            rows += self.db.execute(
                f"SELECT key, state, record FROM entries WHERE state >= 2 AND key IN ({marks})", part
            ).fetchall()
        return pl.DataFrame(rows, schema={"key": pl.String, "state": pl.Int64, "record": pl.String},
                            orient="row")

    def totals(self) -> LedgerTotals:
        spent, unknown = self.db.execute(
            "SELECT COALESCE(SUM(cost) + SUM(held), 0), COALESCE(SUM(state = 0), 0) FROM entries").fetchone()
        return LedgerTotals(float(spent), int(unknown))

    # -- writing ---------------------------------------------------------------------------
    def sent(self, key: str, held: float) -> None:
        """A call is about to go out: until it is settled, its outcome is unknown."""
        self._record("sent", (key, self.run, held), durable=True)

    def not_charged(self, key: str, held: float, *, before: int | None = SENT) -> None:
        """The call failed in a way that cannot have been charged (a 4xx, a 429). ``before``: the
        key's state before this send, when the caller knows it: ``None`` (no entry) removes the
        "sent" mark, ``RETRY`` puts the earlier outcome back, so a refused call is not counted as
        in flight ("re-sent after a crash") by the next run. ``SENT`` (default) keeps the mark."""
        write = "not_sent" if before is None else "refused" if before == RETRY else "not_charged"
        self._record(write, (held, key), durable=False)

    def answered(self, key: str, answer: dict[str, Any], paid: float, held: float) -> None:
        """A call's answer (label votes and re-asks; plain rows record their outcome instead)."""
        self._record("answered", (key, self.run, paid, held, _encode(answer)), durable=False)

    def outcome(self, key: str, record: dict[str, Any], *, final: bool, paid: float, held: float) -> None:
        """A row's outcome: its output columns, and what its own (unrecorded) calls cost."""
        self._record("outcome", (key, FINAL if final else RETRY, self.run, paid, held, _encode(record)),
                     durable=False)

    def _record(self, write: str, args: tuple[Any, ...], *, durable: bool) -> None:
        """While a run groups its writes and the journal is open: appended to the journal, then
        executed in the open transaction; otherwise as :meth:`_write` does. A ``durable`` write is
        in the journal file when this returns, with any written before it; the others wait in
        memory for it, or for :meth:`commit` (what the runner calls before it reports a row): one
        ``write()`` a row, not two."""
        journal = self._journal
        if journal is None or not self.grouped:
            self._write(_WRITES[write], args, durable=durable)
            return
        try:
            journal.append(write, args, durable=durable, record=write in _RECORDED)
        except OSError as exc:
            raise self._journal_failed(journal, exc) from None
        if not self._applying:
            return
        try:
            if not self.db.in_transaction:
                self.db.execute("BEGIN")
            self.db.execute(_WRITES[write], args)
        except sqlite3.Error as exc:
            raise self._cannot_apply(exc) from None

    def _cannot_apply(self, exc: sqlite3.Error) -> WriteError:
        """The database refused a write the journal holds: the rest of the run goes to the journal
        alone, and the next open applies it all (nothing is lost, so nothing is abandoned)."""
        self._applying = False
        with contextlib.suppress(sqlite3.Error):
            self.db.execute("ROLLBACK")
        return WriteError(f"{self.path}: cannot record ({exc}); what this run recorded is kept in its "
                          "journal and applied when the job next runs: free the space and run again to resume")

    def commit(self) -> None:
        """Make every write so far durable: with the journal open, in the journal file, and the
        open transaction committed once :data:`COMMIT_SECONDS` have passed since the last one."""
        journal = self._journal
        if journal is None:
            super().commit()
            return
        if time.monotonic() - self._committed_at >= COMMIT_SECONDS:
            self.flush()
        else:
            self._write_pending(journal)

    def _write_pending(self, journal: Journal) -> None:
        try:
            journal.write_pending()
        except OSError as exc:
            raise self._journal_failed(journal, exc) from None

    def _commit_through(self, journal: Journal) -> None:
        """Commit the open transaction, and with it how far into the journal the database now reaches."""
        self.db.execute("UPDATE journal SET generation = ?, applied = ?", (journal.generation, journal.size))
        self.db.execute("COMMIT")

    def _journal_failed(self, journal: Journal, exc: OSError) -> WriteError:
        """The journal refused a write (a full disk): the file may end in part of a line, so
        nothing more goes to it. What the open transaction holds is committed now, and the rest of
        the run commits each write itself (a "sent" mark commits the outcomes before it)."""
        self._journal = None
        journal.close()  # the next open skips what the database holds, and stops at a cut line
        if self._applying and self.db.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # if not, the journal up to here is applied then
                self._commit_through(journal)
        return WriteError(_cannot_record_message(journal.path, exc.strerror or exc))

    def flush(self) -> None:
        """Commit everything written so far to the database, with how far into the journal it reaches."""
        journal = self._journal
        if journal is None:
            super().commit()
            return
        self._committed_at = time.monotonic()
        self._write_pending(journal)  # first: what the commit says it reaches must be in the file
        if not self._applying or not self.db.in_transaction:
            return
        try:
            self._commit_through(journal)
        except sqlite3.Error as exc:
            raise self._cannot_apply(exc) from None
        if journal.size > ROTATE_BYTES:
            self._next_journal()

    def _next_journal(self) -> None:
        """Start a new journal file once the database holds all of the current one."""
        old = self._journal
        assert old is not None
        try:  # beside the old one: a shard's journal has a folder of its own
            self._journal = Journal(old.path.parent, old.generation + 1)
        except OSError:  # no new file now: the current one goes on, and the next commit tries again
            return
        try:
            self.db.execute("UPDATE journal SET generation = ?, applied = 0", (self._journal.generation,))
        except sqlite3.Error as exc:  # the old file stays: its lines are applied, and skipped
            old.close()
            raise self._cannot_apply(exc) from None
        old.remove()


# The writes a ledger makes, by name: what a journal line says, replayed through the same statement.
# (numbered parameters: the record, when there is one, comes last, as a journal line keeps it)
_WRITES = {
    "sent": "INSERT INTO entries(key, state, run, held) VALUES (?1, 0, ?2, ?3) "
            "ON CONFLICT(key) DO UPDATE SET state = 0, run = excluded.run, held = held + excluded.held",
    "not_charged": "UPDATE entries SET held = MAX(0, held - ?1) WHERE key = ?2",
    # a refused send of a key that had no entry, or a transient outcome, before it: as if unsent
    "not_sent": "DELETE FROM entries WHERE key = ?2 AND state = 0 AND record IS NULL AND cost = 0 "
                "AND held <= ?1 + 1e-12",
    "refused": "UPDATE entries SET held = MAX(0, held - ?1), state = 3 WHERE key = ?2 AND state = 0 "
               "AND record IS NOT NULL",
    "answered": "INSERT INTO entries(key, state, run, cost, held, record) VALUES (?1, 1, ?2, ?3, 0, ?5) "
                "ON CONFLICT(key) DO UPDATE SET state = 1, run = excluded.run, cost = cost + excluded.cost, "
                "held = MAX(0, held - ?4), record = excluded.record",
    "outcome": "INSERT INTO entries(key, state, run, cost, held, record) VALUES (?1, ?2, ?3, ?4, 0, ?6) "
               "ON CONFLICT(key) DO UPDATE SET state = excluded.state, run = excluded.run, "
               "cost = cost + excluded.cost, held = MAX(0, held - ?5), record = excluded.record",
}
_RECORDED = {"answered", "outcome"}  # writes whose last argument is a JSON record
_encode = json.JSONEncoder(ensure_ascii=False).encode  # made once: ``json.dumps`` with options makes one a call


def _cannot_record_message(path: Path, reason: object) -> str:
    return (f"{path}: cannot record ({reason}); the ledger keeps what it already has: "
            "free the space and run again to resume")


def _finite(args: Sequence[Any]) -> bool:
    """Whether a journal line's numbers are all finite. A version that believed a server's NaN
    cost wrote such lines, which SQLite cannot store (NaN is NULL there): left out, the call's
    entry stays "sent", its worst case held, and its row runs again, rather than the ledger never
    opening again."""
    return all(math.isfinite(a) for a in args if isinstance(a, float))


def _apply_journals(db: sqlite3.Connection, root: Path) -> Journal:
    """Apply what the journal files hold beyond the database's last commit, drop them, and open
    a new one (a job killed mid-run loses nothing the journal had)."""
    row = db.execute("SELECT generation, applied FROM journal").fetchone()
    generation, applied = row if row else (0, 0)
    files = journals(root)
    db.execute("BEGIN")
    try:
        for number, path in files:
            if number >= generation:
                for write, args in entries(path, applied if number == generation else 0):
                    if write in _WRITES and _finite(args):
                        db.execute(_WRITES[write], args)
        journal = Journal(root, max([generation, *(n for n, _ in files)]) + 1)
        db.execute("DELETE FROM journal")
        db.execute("INSERT INTO journal(generation, applied) VALUES (?, 0)", (journal.generation,))
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
    for _, path in files:
        path.unlink(missing_ok=True)
    return journal


def shard_journal(shard: Path) -> Path:
    """The folder of a worker's shard's journal: its files, and the lock its writer holds."""
    return shard.with_suffix(".journal")


def take_over_journal(shard: Path) -> bool:
    """Apply what a shard's journal holds beyond its database, if its writer is gone (its lock is
    free; the lock dies with the process): False while the writer lives. Under the lock, so two
    processes finding the writer gone apply it once; the journal is dropped once applied."""
    folder = shard_journal(shard)
    if not journals(folder):
        return True
    try:
        lock = _take_lock(folder / LOCK_NAME)
    except JobBusy:
        return False
    except FileNotFoundError:  # the folder went since: merged by the driver
        return True
    try:
        if journals(folder):  # not applied by another process before this one took the lock
            db = _connect(shard)
            try:
                _apply_journals(db, folder).remove()
            finally:
                db.close()
    finally:
        os.close(lock)
    return True


def _journal_applied(shard: Path) -> bool:
    """Whether a shard's database holds its whole journal (as its writer left it at its last commit)."""
    db = _connect(shard, readonly=True)
    try:
        row = db.execute("SELECT generation, applied FROM journal").fetchone()
    finally:
        db.close()
    generation, applied = row if row else (0, 0)
    for number, path in journals(shard_journal(shard)):
        with contextlib.suppress(FileNotFoundError):  # dropped since: applied
            size = path.stat().st_size
            if size and (number > generation or (number == generation and size > applied)):
                return False
    return True


CLAIM_SLOTS = 1 << 24  # bytes of the claims file a request key can hash to (collisions only make a job wait)


class Cache(_Store):
    """Answers shared across jobs (``--cache DIR``): request key → answer, never a row outcome.

    Jobs in other processes may use the same cache at the same time: a job about to pay for a
    request the cache does not have claims its key first (:meth:`claim_now`, :meth:`claim`), so a
    second job asking the same waits for that answer instead of paying for it again. A claim is a
    POSIX record lock on one byte of ``claims`` (at the key's hash): it dies with its process, so a
    killed job leaves nothing to clean up. No library offers per-key locks across processes; SQLite's
    locks are per database. Record locks are per process: two jobs in one process are not kept apart.
    """

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / "cache.sqlite"
        try:
            self.db = _connect(self.path)
            self.db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, record TEXT NOT NULL) "
                            "WITHOUT ROWID")
            self._claims = os.open(root / "claims", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except (sqlite3.Error, OSError) as exc:
            raise WriteError(f"{self.path}: cannot open the cache ({exc})") from None
        self._held: set[int] = set()
        self._checkpoint_beside()

    @staticmethod
    def _slot(key: str) -> int:
        """The byte of ``claims`` for ``key``: the same in every process (not ``hash``, which is salted)."""
        return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % CLAIM_SLOTS

    def claim_now(self, key: str) -> bool:
        """Claim ``key`` if no other job has; False when one is asking it now."""
        slot = self._slot(key)
        try:
            _lock_byte(self._claims, slot, wait=False)
        except BlockingIOError:  # held by another job
            return False
        self._held.add(slot)
        return True

    async def claim(self, key: str) -> None:
        """Wait until the job asking ``key`` is done with it, and claim it. Cancelled, the waiting
        thread may still take the claim later: :meth:`close` lets it go with the file."""
        slot = self._slot(key)
        await anyio.to_thread.run_sync(lambda: _lock_byte(self._claims, slot, wait=True), abandon_on_cancel=True)
        self._held.add(slot)

    def release(self, key: str) -> None:
        slot = self._slot(key)
        if slot in self._held:
            self._held.discard(slot)
            with contextlib.suppress(OSError):
                _lock_byte(self._claims, slot, unlock=True)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._claims)  # every claim of this process goes with it
        super().close()

    def get(self, key: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT record FROM answers WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, answer: dict[str, Any]) -> None:
        self._write("INSERT OR REPLACE INTO answers(key, record) VALUES (?, ?)",
                    (key, json.dumps(answer, ensure_ascii=False)))


_FLOCK = "hhqqi4x"  # struct flock on Linux: type, whence, start, len, pid (0 for OFD locks), padding


def _lock_byte(fd: int, offset: int, *, wait: bool = False, unlock: bool = False) -> None:
    """Lock (or unlock) one byte of ``fd`` with an open-file-description lock; without ``wait``,
    ``BlockingIOError`` when another open file holds it."""
    kind = fcntl.F_UNLCK if unlock else fcntl.F_WRLCK
    command = fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK
    try:
        fcntl.fcntl(fd, command, struct.pack(_FLOCK, kind, os.SEEK_SET, offset, 1, 0))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise BlockingIOError(exc.errno, exc.strerror) from None
        raise


def _remove_db(path: Path) -> None:
    for name in (path.name, path.name + "-wal", path.name + "-shm"):
        with contextlib.suppress(OSError):
            (path.parent / name).unlink()


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for i in range(0, len(items), CHUNK):
        yield items[i:i + CHUNK]


def _take_lock(path: Path) -> int:
    """An exclusive ``flock`` that dies with this process; the holder's pid is in the file."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise JobBusy(f"{path.parent}: this job is running in process {holder}; wait for it to "
                      "finish or stop it, then run again") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd
