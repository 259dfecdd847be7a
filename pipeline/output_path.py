"""Where a job writes, checked before the first paid call: the output Parquet, its ledger, exports.

A job that pays for its rows and then cannot write them (the output is a directory, lies under a
regular file or in ``/proc``, or is the input itself) has wasted the money; these checks run in
the estimate pass, which is the run's preflight. The input file is never overwritten.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .errors import ConfigError
from .ledger import ledger_dir

__all__ = ["EXPORT_FORMATS", "check_output", "export_path"]

EXPORT_FORMATS = {"jsonl": ".jsonl", "csv": ".csv"}  # --format writes these next to the Parquet


def export_path(parquet: Path, fmt: str) -> Path:
    """Where ``--format jsonl|csv`` writes its copy of the output: beside it, another suffix."""
    return parquet.with_suffix(EXPORT_FORMATS[fmt])


def check_output(output: Path, input_path: Path, *, formats: Iterable[str] = (), parts: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``output`` (and each export) can be written and is not the input.

    ``parts``: the output is a directory of Parquet parts (``run --ray --parts-rows``)."""
    if parts:
        _check_parts(output, input_path)
        return
    targets = [("output", output)]
    targets += [(f"--format {fmt} export", export_path(output, fmt)) for fmt in formats if fmt in EXPORT_FORMATS]
    for what, path in targets:
        if _same_file(path, input_path):
            raise ConfigError(f"{what} {path} is the input file {input_path}: it would be overwritten; "
                              "choose another output path")
        if path.is_dir():
            raise ConfigError(f"{what} {path} is a directory: give a file path, e.g. {path / 'results.parquet'}")
        if path.exists() and not path.is_file():
            raise ConfigError(f"{what} {path} exists and is not a regular file")
    ledger = ledger_dir(output)
    if ledger.exists() and not ledger.is_dir():
        raise ConfigError(f"{ledger} (where the output's results are recorded) exists and is not a directory")
    _check_creatable(output.parent, f"output {output}")


PARTS_MARK = "_momo_batch.json"  # written last into a directory of parts: the provenance and totals


def _check_parts(output: Path, input_path: Path) -> None:
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output {output} is a file: --parts-rows writes a directory of Parquet parts")
    if output.is_dir() and any(output.iterdir()) and not (output / PARTS_MARK).is_file():
        raise ConfigError(f"output {output} is a directory this program did not write (no {PARTS_MARK}): "
                          "give a new or empty one")
    if input_path.resolve().is_relative_to(output.resolve()):
        raise ConfigError(f"output {output} holds the input {input_path}: it would be replaced")
    ledger = ledger_dir(output)
    if ledger.exists() and not ledger.is_dir():
        raise ConfigError(f"{ledger} (where the output's results are recorded) exists and is not a directory")
    _check_creatable(output.parent, f"output {output}")


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    with contextlib.suppress(OSError):
        return a.exists() and b.exists() and os.path.samefile(a, b)
    return False


def _check_creatable(directory: Path, what: str) -> None:
    """``directory`` exists and takes new files, or can be created: probe its nearest existing ancestor."""
    probe = directory
    while not probe.exists():  # False under a regular file too (ENOTDIR): keep climbing to it
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{what} cannot be created: {probe} is a regular file, not a directory")
    try:
        fd, name = tempfile.mkstemp(prefix=".momo-batch-probe-", dir=probe)
    except OSError as exc:
        raise ConfigError(f"{what} cannot be created: no file can be written in {probe} "
                          f"({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(name)

