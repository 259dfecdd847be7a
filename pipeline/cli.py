"""The ``momo-batch`` command: parses arguments, reads the environment, renders with rich.

All work lives in the library (:func:`pipeline.run_job`, the providers); this module only
wires it to a terminal. Every expected failure is one line on stderr and a documented exit code.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio
import typer
from rich.console import Console
from rich.table import Table

from ._memory import tune_allocators
from ._version import __version__
from .config import Job, OutputConfig, ProviderConfig
from .connect import MOMO_DEFAULT_URL, Connection, Credentials
from .errors import ConfigError, MomoError, TransientError, redact
from .outcome import EXIT_MEANINGS, ExitCode

app = typer.Typer(add_completion=False, no_args_is_help=True)
out = Console()
err = Console(stderr=True)
T = TypeVar("T")

BaseUrl = Annotated[str | None, typer.Option("--base-url", help="API base URL (env MOMO_BASE_URL).")]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _examples(*commands: str) -> str:
    """An --help epilog; each example a paragraph of its own (rich joins single lines)."""
    return "Examples:\n\n" + "\n\n".join(f"  {c}" for c in commands)


def _print_version(asked: bool) -> None:
    if asked:
        print(f"momo-batch {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_version, help="Print the version and exit.")] = False) -> None:
    """Bulk prompt jobs against LLM agent APIs: rate-limited, resumable, costed.

    Try it on a local sandbox server, no key needed: momo-batch run jobs/example.toml --sandbox
    """


MAX_LINE = 1000  # characters of an error line: what a message quotes from a bad file is short anyway


def _fail(message: str, code: int) -> typer.Exit:
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())  # always one line
    line = "".join(ch if ch.isprintable() else "?" for ch in line)  # never a terminal's control bytes
    line = line if len(line) <= MAX_LINE else line[:MAX_LINE - 1] + "…"
    err.print(f"[red]error:[/red] {redact(line)}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(code)


def guarded(fn: Callable[[], T]) -> T:
    """Run ``fn``; turn the error tree into one line and its class's exit code, never a traceback."""
    try:
        return fn()
    except BaseException as exc:
        expected = _expected(exc)
        if expected is None:
            raise
        message, code = _one_line(expected)
        raise _fail(message, code) from None


def _expected(exc: BaseException) -> BaseException | None:
    """The error to report: ``exc``, or the first one a task group wrapped; ``None`` for a bug."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _expected(inner)
            if found is not None:
                return found
        return None
    return exc if isinstance(exc, MomoError | OSError | sqlite3.Error | KeyboardInterrupt) else None


def _one_line(exc: BaseException) -> tuple[str, int]:
    if isinstance(exc, TransientError):
        return f"server unreachable or failing: {exc}", exc.exit_code
    if isinstance(exc, MomoError):
        return str(exc), exc.exit_code
    if isinstance(exc, OSError):  # a write that failed outside the places that say so (ledger, export)
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where} — {EXIT_MEANINGS[ExitCode.WRITE]}", ExitCode.WRITE
    if isinstance(exc, sqlite3.Error):  # the ledger or the cache, read or written outside the places that say so
        return f"the ledger or the cache: {exc} — {EXIT_MEANINGS[ExitCode.WRITE]}", ExitCode.WRITE
    return "interrupted", ExitCode.INTERRUPTED


@contextlib.contextmanager
def _connect(job: Job, base_url: str | None, sandbox: bool) -> Iterator[Connection]:
    """Where the job's calls go: ``--base-url`` (or the environment) with the key from the
    environment; with ``--sandbox``, a sandbox server on an ephemeral port and its public demo
    key (its labelling agents know the gold labels of a label job's input, if it has them)."""
    cfg = job.provider
    if not sandbox:
        yield Connection(Credentials.from_env(cfg), base_url)  # the key and MOMO_BASE_URL / OPENAI_BASE_URL
        return
    from .cli_run import sandbox_truth
    from .sandbox import Sandbox, SandboxConfig

    with Sandbox(SandboxConfig(label_truth=sandbox_truth(job))).running() as sb:
        err.print(f"sandbox server listening on {sb.relay_url}", highlight=False)
        # each sandbox has a new port but the same answers: request keys call it "sandbox"
        if cfg.kind == "momo":
            yield Connection(Credentials(f"momo-sandbox-{job.limits.tier}"), sb.momo_url, endpoint="sandbox")
        else:
            yield Connection(Credentials("sk-sandbox-relay", "sandbox-system-token", "1"), sb.relay_url,
                             endpoint="sandbox")


def _ray_options(on_ray: bool, address: str | None, workers: int, parts_rows: int | None, fmt: str) -> Any:
    if not on_ray:
        if address is not None or parts_rows is not None:
            raise _fail("--address and --parts-rows need --ray", ExitCode.BAD_INPUT)
        return None
    if parts_rows is not None and fmt != "parquet":
        raise _fail("--format exports one file; with --parts-rows the output is a directory of Parquet parts",
                    ExitCode.BAD_INPUT)
    try:
        import ray  # noqa: F401  (the optional extra)
    except ImportError:
        raise _fail("--ray needs Ray: pip install 'momo-batch[ray]'", ExitCode.BAD_INPUT) from None
    from .ray import RayOptions

    return RayOptions(address=address or os.environ.get("RAY_ADDRESS") or None, workers=workers,
                      parts_rows=parts_rows)


def _momo_cfg() -> ProviderConfig:
    return ProviderConfig(kind="momo", agent_id=0)


# -- run ---------------------------------------------------------------------------------------
@app.command(epilog=_examples(
    "momo-batch run jobs/example.toml --sandbox",
    "momo-batch run jobs/example.toml --max-cost 5 --report",
    "momo-batch run jobs/example.toml --ray --workers 4"))
def run(
    job_file: Annotated[Path, typer.Argument(help="Job file (TOML).")],
    output: Annotated[Path | None, typer.Option(help="Output Parquet (instead of the job's output path).")] = None,
    base_url: BaseUrl = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N input rows.")] = None,
    max_cost: Annotated[float | None, typer.Option("--max-cost", min=0, help="Hard cost cap.")] = None,
    restart: Annotated[bool, typer.Option(help="Discard earlier results of this output.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Run even if preflight says it may not fit.")] = False,
    sandbox: Annotated[bool, typer.Option(help="Start a sandbox server for this run and use it.")] = False,
    fmt: Annotated[str, typer.Option("--format", help="Also export: parquet (default), jsonl or csv.")] = "parquet",
    as_json: AsJson = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    cache: Annotated[Path | None, typer.Option(
        help="Reuse answers any job recorded in this directory, at no charge (and add this job's).")] = None,
    with_report: Annotated[bool, typer.Option("--report", help="Also write the HTML report beside the output "
                                                               "and print its path.")] = False,
    on_ray: Annotated[bool, typer.Option("--ray", help="Run on Ray Data: one rate limit, budget and ledger for "
                                                       "all workers (needs Ray: make venv installs it).")] = False,
    address: Annotated[str | None, typer.Option(help="With --ray: the cluster to join (default RAY_ADDRESS, "
                                                     "else a local Ray on this machine).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="With --ray: worker processes.")] = 2,
    parts_rows: Annotated[int | None, typer.Option(
        "--parts-rows", min=1, help="With --ray: write the output as a directory of Parquet parts of N rows.")] = None,
) -> None:
    """Run a job: every request not yet answered is sent once; safe to run again after any stop."""
    if fmt not in ("parquet", "jsonl", "csv"):
        raise _fail(f"--format must be parquet, jsonl or csv, not {fmt!r}", ExitCode.BAD_INPUT)
    job = guarded(lambda: Job.load(job_file))
    # a cost cap counts every call's prompt: its vocabulary belongs in this process
    _preload_tokenizer(here=max_cost is not None or job.limits.max_cost is not None)
    from .cli_run import RunCommand, run_cli_job

    command = RunCommand(output=output, limit=limit, max_cost=max_cost, restart=restart, yes=yes, fmt=fmt,
                         as_json=as_json, quiet=quiet, cache=cache, with_report=with_report,
                         ray=_ray_options(on_ray, address, workers, parts_rows, fmt))
    code = guarded(lambda: run_cli_job(job, command, connect=lambda j: _connect(j, base_url, sandbox),
                                       console=out, errors=err))
    raise typer.Exit(code)


@app.command(epilog=_examples(
    "momo-batch estimate jobs/example.toml --sandbox",
    "momo-batch estimate jobs/example.toml --pilot 20 --json"))
def estimate(
    job_file: Annotated[Path, typer.Argument(help="Job file (TOML).")],
    pilot: Annotated[int, typer.Option(min=0, help="Run N sampled rows for real first (reused by the run).")] = 0,
    output: Annotated[Path | None, typer.Option(help="The run's output (where pilot results are kept).")] = None,
    base_url: BaseUrl = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N input rows.")] = None,
    max_cost: Annotated[float | None, typer.Option("--max-cost", min=0, help="Cap to check against.")] = None,
    sandbox: Annotated[bool, typer.Option(help="Start a sandbox server and use it.")] = False,
    as_json: AsJson = False,
) -> None:
    """What the job will cost and how long it takes, before it runs (no paid call but the pilot's)."""
    _preload_tokenizer(here=True)  # a short command that counts all along (the prompts, a pilot's answers)
    job = guarded(lambda: Job.load(job_file))
    if output is not None:
        job = job.with_overrides(output=OutputConfig(path=output))
    from .cli_run import estimate_cli_job

    code = guarded(lambda: estimate_cli_job(
        job, pilot=pilot, limit=limit, max_cost=max_cost, as_json=as_json,
        connect=lambda j: _connect(j, base_url, sandbox), console=out))
    raise typer.Exit(code)


def _preload_tokenizer(*, here: bool) -> None:
    """The preflight counts tokens: its vocabulary loads (~0.4 s) while polars imports and the input is read."""
    from .tokens import preload

    preload(here=here)


# -- report ------------------------------------------------------------------------------------
@app.command(epilog=_examples(
    "momo-batch report data/out/questions.parquet",
    "momo-batch report data/out/questions.parquet -o report.html"))
def report(
    output_file: Annotated[Path, typer.Argument(help="An output Parquet written by `momo-batch run`.")],
    page: Annotated[Path | None, typer.Option("--output", "-o", help="The HTML file to write "
                                              "(default: beside the Parquet, NAME.report.html).")] = None,
) -> None:
    """Write one self-contained HTML page about a run (charts, summary, provenance); print its path."""
    from .report import write_report

    print(guarded(lambda: write_report(output_file, page)))


# -- eval --------------------------------------------------------------------------------------
@app.command("eval", epilog=_examples(
    "momo-batch eval data/out/reviews-gold-labelled.parquet --gold gold --by case"))
def eval_cmd(
    output_file: Annotated[Path, typer.Argument(help="A labelled output Parquet.")],
    gold: Annotated[str, typer.Option(help="The column holding the gold labels.")],
    pred: Annotated[str, typer.Option(help="The column holding the predicted labels.")] = "label",
    by: Annotated[list[str] | None, typer.Option(help="Also accuracy by this column (repeatable).")] = None,
    as_json: AsJson = False,
) -> None:
    """How good are the labels? Accuracy, per-label P/R/F1, confusion, kappa, accuracy by agreement."""
    from .labels.metrics import evaluate

    ev = guarded(lambda: evaluate(output_file, gold, pred=pred, by=by or []))
    if as_json:
        print(json.dumps(ev.as_dict(), ensure_ascii=False))
        return
    from .cli_eval import render_evaluation

    render_evaluation(ev, out)


# -- agents / balance --------------------------------------------------------------------------
def _momo_call(base_url: str | None, action: Callable[[Any], Any]) -> Any:
    from .providers.momo import MomoClient

    cfg = _momo_cfg()
    creds = Credentials.from_env(cfg)
    url = base_url or creds.base_url or MOMO_DEFAULT_URL

    async def go() -> Any:
        async with MomoClient(creds.api_key, url, timeout=15.0) as client:
            return await action(client)

    return anyio.run(go)


@app.command()
def agents(base_url: BaseUrl = None, as_json: AsJson = False) -> None:
    """List every agent (all pages) with its price."""
    found = guarded(lambda: _momo_call(base_url, lambda c: c.list_agents()))
    if as_json:
        print(json.dumps([a.__dict__ if hasattr(a, "__dict__") else _asdict(a) for a in found],
                         ensure_ascii=False))
        return
    table = Table(title=f"{len(found)} agents")
    for col in ("id", "name", "price / 1k tokens", "rating", "description"):
        table.add_column(col, justify="right" if col in ("id", "rating") else "left")
    for a in found:
        table.add_row(str(a.id), a.name, f"{a.price_per_1k_tokens:g}",
                      "" if a.rating is None else f"{a.rating:g}", a.description or "")
    out.print(table)


def _asdict(obj: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(obj)


@app.command()
def balance(base_url: BaseUrl = None, as_json: AsJson = False) -> None:
    """Show the balance, its currency and prepaid token packages."""
    acct = guarded(lambda: _momo_call(base_url, lambda c: c.balance()))
    if as_json:
        print(json.dumps({"balance": acct.remaining, "currency": acct.currency,
                          "packages": [{"agent_id": k, "remaining_tokens": v}
                                       for k, v in acct.packages.items()]}))
        return
    out.print(f"balance: [bold]{acct.remaining:g} {acct.currency}[/bold]")
    if acct.packages:
        table = Table(title="prepaid token packages")
        table.add_column("agent_id", justify="right")
        table.add_column("remaining_tokens", justify="right")
        for agent_id, tokens in acct.packages.items():
            table.add_row(str(agent_id), f"{tokens:,}")
        out.print(table)
    else:
        out.print("no prepaid token packages")


# -- sandbox -----------------------------------------------------------------------------------
@app.command("sandbox", epilog=_examples(
    "momo-batch sandbox --port 8765",
    "MOMO_API_KEY=momo-sandbox-pro momo-batch agents --base-url http://127.0.0.1:8765/v1"))
def sandbox_cmd(
    port: Annotated[int, typer.Option(help="Port (0: ephemeral).")] = 8765,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    config: Annotated[Path | None, typer.Option(help="Sandbox config (TOML).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for fault injection.")] = None,
    window_seconds: Annotated[float | None, typer.Option(help="Length of a rate-limit 'minute' (scaled time).")] = None,
    latency_ms: Annotated[float | None, typer.Option(help="Server-side delay per call (model time).")] = None,
    algorithm: Annotated[str | None, typer.Option(help="fixed_window | sliding_log | token_bucket")] = None,
    label_truth: Annotated[Path | None, typer.Option(
        help="CSV (text, gold[, case]) whose gold labels the labelling agents know.")] = None,
) -> None:
    """Run the sandbox server (both APIs of the contract) until Ctrl-C."""
    from .sandbox import SandboxConfig, serve_forever

    def build() -> Any:
        from pydantic import ValidationError

        changes = {k: v for k, v in {"seed": seed, "window_seconds": window_seconds, "latency_ms": latency_ms,
                                      "algorithm": algorithm, "label_truth": label_truth}.items() if v is not None}
        try:
            cfg = SandboxConfig.from_toml(config) if config else SandboxConfig()
            return SandboxConfig.model_validate({**cfg.model_dump(), **changes}) if changes else cfg
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"sandbox config: {where}: {first['msg']}") from None
        except (OSError, ValueError) as exc:  # an unreadable or malformed TOML file
            raise ConfigError(f"sandbox config {config}: {exc}") from None

    cfg = guarded(build)
    with contextlib.suppress(KeyboardInterrupt):
        serve_forever(cfg, host=host, port=port,
                      on_ready=lambda url: print(f"sandbox listening on {url}", flush=True))


@app.command()
def version() -> None:
    """Print the version."""
    print(__version__)


def main() -> None:
    tune_allocators()  # before polars and pyarrow load (lazily, in the commands)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
