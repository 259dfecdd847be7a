"""Exit codes of ``momo-batch``: one table, quoted by the README, imported by everything else.

Each error class in :mod:`pipeline.errors` names its code from here; :data:`EXIT_MEANINGS` is the
README's table word for word (a test keeps the two equal). Kept free of imports so that the CLI
can read it without loading the run machinery.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What a script calling ``momo-batch`` can rely on."""

    OK = 0
    ROW_ERRORS = 1
    BAD_INPUT = 2
    INSUFFICIENT_BALANCE = 3
    BUDGET = 4
    TERMINAL = 5
    UNREACHABLE = 6
    REFUSED = 7
    BUSY = 8
    WRITE = 9
    INTERRUPTED = 130
    TERMINATED = 143


EXIT_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "every row finished ok (or skipped: null/empty prompt)",
    ExitCode.ROW_ERRORS: "the job finished, some rows ended in an error (see `error_code`)",
    ExitCode.BAD_INPUT: "bad job file, argument, key, input or output path (the message names it); nothing was paid",
    ExitCode.INSUFFICIENT_BALANCE: "stopped: insufficient balance — top up and run the same command again",
    ExitCode.BUDGET: "stopped: `max_cost` reached — raise it and run again",
    ExitCode.TERMINAL: "stopped: the service refused the key, agent or model, before paying for more",
    ExitCode.UNREACHABLE: "no usable API at the base URL: unreachable, failing, or not this API "
                          "(the message names the URL)",
    ExitCode.REFUSED: "preflight refused: the worst case may not fit the balance or `max_cost` (`--yes` runs anyway)",
    ExitCode.BUSY: "another process is running this job (it holds the ledger's lock)",
    ExitCode.WRITE: "the ledger or the output cannot be written (disk full, I/O error) — free space, run again",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C) — run again to resume",
    ExitCode.TERMINATED: "terminated (SIGTERM) — run again to resume",
}
