"""Exit codes of ``momo-batch``: one table, quoted by the README, imported by everything else.

Kept free of imports so that the CLI can read it without loading the run machinery.
"""

from __future__ import annotations

EXIT_OK = 0  # every row finished ok (or skipped: null/empty prompt)
EXIT_ROW_ERRORS = 1  # the job finished, some rows ended in an error
EXIT_BAD_INPUT = 2  # bad job file, argument or input
EXIT_INSUFFICIENT_BALANCE = 3  # stopped: insufficient balance
EXIT_BUDGET = 4  # stopped: max_cost reached
EXIT_TERMINAL = 5  # stopped: invalid API key or unknown agent/model
EXIT_UNREACHABLE = 6  # server unreachable or failing
EXIT_REFUSED = 7  # preflight refused: the worst case may not fit
EXIT_BUSY = 8  # another process is running this job (its ledger is locked)
EXIT_WRITE = 9  # the ledger or the output cannot be written (disk full, I/O error)
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C (SIGINT)
EXIT_TERMINATED = 143  # stopped by SIGTERM

# why a run stopped early → its exit code (any other stop code: EXIT_TERMINAL)
STOP_EXIT = {
    "INSUFFICIENT_BALANCE": EXIT_INSUFFICIENT_BALANCE,
    "BUDGET_EXCEEDED": EXIT_BUDGET,
    "WRITE_FAILED": EXIT_WRITE,
    "INTERRUPTED": EXIT_INTERRUPTED,
    "TERMINATED": EXIT_TERMINATED,
}
