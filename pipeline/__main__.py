"""``python -m pipeline`` and the ``momo-batch`` command.

:func:`entry` imports the CLI itself, so that a Ctrl-C while typer, rich and the rest load
(~0.2 s) is one line and exit 130 like any other, not a traceback; nothing has been paid or
written by then.
"""

import sys

INTERRUPTED = 130  # ExitCode.INTERRUPTED, written out: importing it could be what the Ctrl-C cuts short


def entry() -> None:
    try:
        from .cli import main

        main()
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(INTERRUPTED)


if __name__ == "__main__":
    entry()
