"""``run_job`` on Ray Data: the driver of a distributed run.

The driver holds the job's ledger (and its lock), starts the :class:`~.coordinator.Coordinator`
actor, lets Ray Data read the input in blocks and pass them through an actor pool of
:class:`~.worker.Worker` processes, and writes what comes back, in input order, into one Parquet
file (or a directory of parts). Workers record into shards of the ledger; the driver merges
them into the ledger when the run ends, and merges any a crashed run left when the next starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ..arguments import check_job_argument, check_limit, check_max_cost
from ..config import Job
from ..connect import Connection, Credentials
from ..errors import ConfigError, MomoError, WriteError, exit_code_for
from ..job import Prepared, prepare, provenance, resolve
from ..ledger import Ledger
from ..outcome import RayFigures, Reuse, RunReport
from ..output_path import PARTS_MARK
from ..preflight import Warn
from ..providers.base import Provider
from ..runner import RunStats
from ..sink import Totals
from ..usage import paid_by_first
from .coordinator import Coordinator, lateness
from .worker import Worker, WorkerSpec

WORKER_CPUS = 0.25  # a worker waits on the network: a fraction of a core leaves room for Ray Data's reads
READ_CPUS = 0.25  # reading a block is short: a full core each would make the workers wait for CPU slots
BATCH_PER_CONCURRENCY = 16  # rows per batch handed to a worker, per call it keeps in flight
# batches a worker holds at once: while one drains (its last calls finishing), the next feed the runner
BATCHES_IN_FLIGHT = 3

T = TypeVar("T")


@dataclass
class RayOptions:
    """How the job runs on Ray (the rest is the job file)."""

    address: str | None = None  # a cluster (``ray start --head``); None: RAY_ADDRESS, else a local Ray
    workers: int = 2
    worker_cpus: float = WORKER_CPUS
    batch_rows: int | None = None  # rows per batch; default: concurrency × 16, at least 256
    parts_rows: int | None = None  # write a directory of Parquet parts of this many rows
    backoff: tuple[float, float] = (0.5, 30.0)
    init: dict[str, Any] = field(default_factory=dict)  # more ``ray.init`` arguments
    warn: Warn | None = None  # the preflight's warnings as they arise (all are in ``report.warnings``)
    stop_on_signals: bool = False  # SIGINT / SIGTERM stop the job softly (the CLI's choice)
    # progress: the output's rows as they come back from the workers, counted into ``stats``
    # (by status, with their tokens and cost), and ``on_batch`` called after each batch
    stats: RunStats | None = None
    on_batch: Callable[[], None] | None = None


def run_job(job: Job | str | Path, connection: Connection | Credentials, *, output: Path | None = None,
            limit: int | None = None, restart: bool = False, max_cost: float | None = None,
            yes: bool = False, options: RayOptions | None = None) -> RunReport:
    """Run ``job`` on Ray Data with one rate limit, one budget and one ledger for all workers.

    The same run as :func:`pipeline.run_job`, with its calls executed by Ray's workers: the same
    preflight first (a worst case over the balance or ``max_cost`` raises
    :class:`~pipeline.errors.PreflightRefused` unless ``yes``, before Ray starts or anything is
    paid), the same reconciliation after. Safe to run again after any stop or crash: every
    answer is kept by content key. ``connection`` says where the calls go (credentials alone: to
    their base URL, else the job's); each worker opens its own client from it.
    """
    if isinstance(connection, Credentials):
        connection = Connection(connection)
    job = check_job_argument(job, "pipeline.ray.run_job")  # the package's errors, naming the argument
    limit, max_cost = check_limit(limit, "pipeline.ray.run_job"), check_max_cost(max_cost, "pipeline.ray.run_job")
    opts = options or RayOptions()
    job = resolve(job, output=output)
    _check(job)
    _reachable(opts.address)  # a cluster that is not there: said at once, before the preflight's requests
    prepared = _with_provider(job, connection, lambda provider: prepare(
        job, provider, limit=limit, restart=restart, max_cost=max_cost, yes=yes, warn=opts.warn,
        parts=opts.parts_rows is not None))
    with prepared.plan:  # its temporary files go with the run
        report = _on_ray(prepared, connection, opts, limit=limit, restart=restart)
        _with_provider(job, connection, lambda provider: prepared.settle(provider, report))
    return report


def _with_provider(job: Job, connection: Connection, step: Callable[[Provider], Awaitable[T]]) -> T:
    """One step of the driver's with a provider of its own (a provider's connections belong to
    the event loop that opened them: each ``anyio.run`` opens and closes its own)."""

    async def go() -> T:
        provider = connection.open(job.provider)
        try:
            return await step(provider)
        finally:
            await provider.aclose()

    return anyio.run(go)


def _on_ray(prepared: Prepared, connection: Connection, opts: RayOptions, *, limit: int | None,
            restart: bool) -> RunReport:
    """The calls, on Ray: start (or join) Ray, hold the ledger, drive the workers."""
    import ray

    job = prepared.job
    started_ray = not ray.is_initialized()
    if started_ray:
        # Ray's own chatter (execution plans, progress, its note on token auth) stays in its log
        # files; errors still show
        # A local Ray listens on this machine's address, as `ray start` does, behind the token Ray
        # makes for it: Ray has no public way to keep it on loopback (its private node-address
        # argument turns 127.0.0.1 into the machine's address too)
        try:
            ray.init(address=opts.address, **{"include_dashboard": False, "logging_level": logging.ERROR,
                                              "log_to_driver": False, **opts.init})
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {opts.address}" if opts.address else "a local Ray"
            raise ConfigError(f"cannot start or join {where} ({_first_line(exc)})") from None
    try:
        with Ledger.open(job.output.path, restart=restart) as ledger:
            for shard in ledger.shards():  # a run that died left these: merge before anything is sent
                ledger.absorb(shard)
            ledger.fold()  # workers read it as it is now: it does not change until they are done
            return _drive(prepared, ledger, connection, opts=opts, limit=limit)
    finally:
        if started_ray:
            ray.shutdown()


def _reachable(address: str | None, timeout: float = 5.0) -> None:
    """A ``host:port`` that nothing answers on is one line at once (Ray itself retries for minutes)."""
    given = address or ""
    host, _, port = given.rpartition(":")
    if not host or not port.isdigit() or "://" in given:
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); "
                          "start one with `ray start --head`") from None


def _check(job: Job) -> None:
    if not job.reuse.dedup:
        raise ConfigError("reuse.dedup = false is not supported with --ray yet (the n-th repeat of a prompt "
                          "is counted in input order, which the workers do not see)")
    if job.reuse.cache is not None:
        raise ConfigError("reuse.cache (--cache) is not supported with --ray yet")


def _drive(prepared: Prepared, ledger: Ledger, connection: Connection, *, opts: RayOptions,
           limit: int | None) -> RunReport:
    import ray
    import ray.data

    job, cap = prepared.job, prepared.cap
    limits = job.limits
    coordinator: Any = ray.remote(Coordinator).options(num_cpus=0).remote(
        limits.rate_per_window, limits.window_seconds, cap, ledger.totals().spent,
        stall=2 * job.provider.timeout)
    concurrency = limits.concurrency
    spec = WorkerSpec(job=job, connection=connection, coordinator=coordinator,
                      ledger_root=ledger.root.resolve(), run=ledger.run, price=prepared.price, cap=cap,
                      concurrency=concurrency, lateness=lateness(limits.window_seconds), backoff=opts.backoff,
                      tune_gc=True)
    batch_rows = opts.batch_rows or max(256, concurrency * BATCH_PER_CONCURRENCY)
    ds = _dataset(job, limit, batch_rows).map_batches(
        Worker, fn_constructor_kwargs={"spec": spec}, batch_size=None, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=opts.workers, max_concurrent_calls_per_actor=BATCHES_IN_FLIGHT),
        num_cpus=_worker_cpus(opts))
    out = job.output.path
    started = time.monotonic()
    with _signals(coordinator, opts.stop_on_signals), warnings.catch_warnings():
        # a job smaller than a batch per worker: Ray Data says so; it is not a problem
        warnings.filterwarnings("ignore", "The minimum number of concurrent actors", UserWarning)
        writer = _Writer(out, opts.parts_rows)
        totals, seen, rows, sendable = Totals(), set[str](), 0, 0
        try:
            live = opts.stats or RunStats()
            live.total = prepared.plan.n_rows
            for table in _batches(ds):
                part = _first_pays(pl.from_arrow(table), seen)  # type: ignore[arg-type]
                rows += part.height
                sendable += part.height - part["request_key"].null_count()
                totals.add(part)
                writer.write(part.to_arrow())
                _progress(live, part)
                if opts.on_batch is not None:
                    opts.on_batch()
            if rows == 0:
                raise ConfigError(f"{job.input.path}: input has no rows")
            got = ray.get(coordinator.report.remote())
            report = _report(job, got, rows, time.monotonic() - started)
            report.requests = Reuse(sendable, len(seen))
            report.ray = RayFigures(opts.workers, got["granted"], int(got["counters"].get("dropped_grants", 0)))
            report.job_totals = totals.final()
            writer.close(provenance(job, job.provider.target, report))
        finally:
            writer.abort()
            ray.kill(coordinator)
    for shard in ledger.shards():
        ledger.absorb(shard)
    summarise = getattr(prepared.plan.task, "summarise", None)
    if summarise is not None:
        report.labels = summarise(pl.scan_parquet(out / "part-*.parquet" if opts.parts_rows else out))
    return report


def _batches(ds: Any) -> Iterator[pa.Table]:
    """The workers' output in input order; a failure says what failed, as one of this project's
    errors (a worker's own, e.g. a ledger it cannot write, keeps its class and exit code)."""
    import ray.exceptions

    try:
        yield from ds.iter_batches(batch_format="pyarrow", batch_size=None)
    except ray.exceptions.RayError as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, MomoError):
            cause = cause.__cause__ or getattr(cause, "cause", None)
        if cause is not None:
            raise cause from None
        raise MomoError(f"the job failed on Ray ({_first_line(exc)}); every answer recorded is kept: "
                        "run again to resume") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _worker_cpus(opts: RayOptions) -> float:
    """What each worker claims: ``worker_cpus``, or less when that would leave the cluster no room
    for Ray Data's reads and re-blocking (a task of one CPU): workers that claim every CPU wait
    for input that never comes."""
    import ray

    total = float(ray.cluster_resources().get("CPU", 1.0))
    return max(0.01, min(opts.worker_cpus, (total - 1.0 - READ_CPUS) / opts.workers))


def _dataset(job: Job, limit: int | None, batch_rows: int) -> Any:
    """The input as a Ray dataset, in blocks of ``batch_rows`` (one batch per worker call)."""
    import ray.data

    ray.data.DataContext.get_current().execution_options.preserve_order = True  # every row once, in order
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # plans and progress: in Ray's log files
    ray.data.DataContext.get_current().enable_progress_bars = False
    path = str(job.input.path)
    reader = ray.data.read_csv if path.lower().endswith(".csv") else ray.data.read_parquet
    try:  # its columns were checked by the plan (``prepare``), before Ray started
        ds = reader(path, num_cpus=READ_CPUS)
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read input ({_first_line(exc)})") from None
    if limit is not None:
        ds = ds.limit(limit)
    return ds.repartition(target_num_rows_per_block=batch_rows)


def _progress(live: RunStats, part: pl.DataFrame) -> None:
    """Count a batch of finished output rows into the progress display's counters."""
    for status, n in part.group_by("status").len().iter_rows():
        if status in ("ok", "error", "skipped", "unparsed"):
            setattr(live, status, getattr(live, status) + n)
    live.tokens += int(part["tokens_used"].sum() or 0)  # a duplicate's are 0: each call counted once
    live.cost += float(part["cost"].sum() or 0.0)


def _first_pays(part: pl.DataFrame, seen: set[str]) -> pl.DataFrame:
    """As in a local run: the first row (in input order) asking a request carries its cost; the
    rows after it are duplicates at no cost and no tokens, so those columns sum to what the job used."""
    first = []
    for key in part["request_key"].to_list():
        first.append(key is None or key not in seen)
        if key is not None:
            seen.add(key)
    duplicate = ~pl.Series(first) & part["request_key"].is_not_null()
    return part.with_columns(
        duplicate.alias("duplicate"),
        *paid_by_first(part.columns, pl.lit(duplicate)))


def _report(job: Job, got: dict[str, Any], rows: int, wall: float) -> RunReport:
    counters = got["counters"]
    stats = RunStats(total=rows)
    for name in ("already_done", "ok", "error", "skipped", "unparsed", "tokens", "calls", "retries",
                 "rate_limited", "resent", "unknown_cost_calls", "unknown_outcomes", "duplicates", "cached"):
        setattr(stats, name, int(counters.get(name, 0)))
    stats.cost = float(counters.get("cost", 0.0))
    stats.first_call = counters.get("first_call_min")
    stats.last_call = counters.get("last_call_max")
    stopped = got["stopped"]
    return RunReport(job.output.path, stats, stopped[0] if stopped else None, stopped[1] if stopped else None,
                     exit_code_for(stopped[0]) if stopped else None, wall, job.limits.rate_per_window,
                     job.limits.window_seconds)


class _Writer:
    """Output Parquet: one file, or a directory of parts; written aside and renamed when whole."""

    def __init__(self, output: Path, parts_rows: int | None) -> None:
        self.output = output
        self.parts_rows = parts_rows
        self.tmp = output.with_name(f".{output.name}.tmp")
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._part = 0
        self._in_part = 0

    def write(self, table: pa.Table) -> None:
        try:
            if self._schema is None:
                self._schema = table.schema
                self.output.parent.mkdir(parents=True, exist_ok=True)
                if self.parts_rows:
                    shutil.rmtree(self.tmp, ignore_errors=True)
                    self.tmp.mkdir()
            table = table.cast(self._schema)
            while table.num_rows:
                room = table.num_rows if not self.parts_rows else self.parts_rows - self._in_part
                self._open().write_table(table.slice(0, room))
                self._in_part += min(room, table.num_rows)
                table = table.slice(room)
                if self.parts_rows and self._in_part >= self.parts_rows:
                    self._next_part()
        except OSError as exc:
            raise WriteError(f"{self.output}: cannot write the output ({exc.strerror or exc}); every result "
                             "is kept in the ledger: free the space and run again to write it") from None

    def _open(self) -> pq.ParquetWriter:
        if self._writer is None:
            assert self._schema is not None
            path = self.tmp / f"part-{self._part:05d}.parquet" if self.parts_rows else self.tmp
            self._writer = pq.ParquetWriter(path, self._schema, compression="zstd")
        return self._writer

    def _next_part(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._part += 1
        self._in_part = 0

    def close(self, metadata: dict[str, str]) -> None:
        """The footer (or, for parts, ``_momo_batch.json`` beside them), then the rename."""
        try:
            if self.parts_rows:
                self._next_part()
                (self.tmp / PARTS_MARK).write_text(json.dumps(metadata, indent=1))
                if self.output.is_dir():
                    shutil.rmtree(self.output)
            else:
                self._open().add_key_value_metadata(metadata)
                self._next_part()
            os.replace(self.tmp, self.output)
        except OSError as exc:
            raise WriteError(f"{self.output}: cannot write the output ({exc.strerror or exc}); every result "
                             "is kept in the ledger: free the space and run again to write it") from None

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            if self._writer is not None:
                self._writer.close()
            if self.tmp.is_dir():
                shutil.rmtree(self.tmp)
            else:
                self.tmp.unlink(missing_ok=True)


_SIGNALS = {signal.SIGINT: ("INTERRUPTED", "Ctrl-C"), signal.SIGTERM: ("TERMINATED", "SIGTERM")}


@contextlib.contextmanager
def _signals(coordinator: Any, enabled: bool) -> Iterator[None]:
    """First signal: no new calls anywhere, calls in flight finish, the output is written; the
    second: calls in flight are abandoned too; the third: the default."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    count = 0

    def handle(signum: int, _frame: object) -> None:
        nonlocal count
        count += 1
        code, name = _SIGNALS[signal.Signals(signum)]
        if count > 2:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        coordinator.stop.remote(code, f"stopped by {name}", count > 1)

    previous = {sig: signal.signal(sig, handle) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
