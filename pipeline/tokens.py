"""Exact, offline token counts.

``tiktoken`` downloads its vocabulary at run time, which fails without network. ``toktok``
(PyPI ``toktok-rs``) ships cl100k/o200k compiled into its wheel, matches tiktoken's ids exactly
and counts in Rust with the GIL released.

A loaded vocabulary costs ~60 MB of memory (o200k), a third of a run's peak, and toktok keeps
what it loaded for the life of the process, with no public call to drop it. So the bulk counts
(:func:`count_tokens`: the preflight's) run in a counting process of its own (:class:`_Counter`,
``python -c`` over two pipes), which :func:`release` ends, and its memory goes with it: a run
without a cost cap holds no vocabulary once its preflight has counted.

A single count (:func:`count_one`: a capped run's worst case of each call, an estimate's pilot
answers) is made in this process, where it costs no round trip to another; once this process
holds a vocabulary it counts everything itself and the counting process is ended (it would only
hold a second copy). A caller that knows it will count all along says so: ``preload(here=True)``.
"""

from __future__ import annotations

import atexit
import marshal
import subprocess
import sys
import threading
from collections.abc import Sequence

import toktok

DEFAULT_ENCODING = "o200k_base"
TOKENIZER_NAME = f"toktok {getattr(toktok, '__version__', '?')}"


# texts per ``batch_count`` call: its per-thread buffers grow with the batch (200,000 short
# prompts in one call: +40 MB of peak RSS; in chunks of 4,096: +16 MB, at ~the same speed)
CHUNK = 4096
# one counting thread: a second one costs ~16 MB of scratch buffers, and one thread already
# counts 200,000 short prompts in 0.05 s (measured: 0.047 s with 1 thread, 0.058 s with 2)
THREADS = 1

# The counting process: frames of (8-byte length, marshal data) each way. marshal, not pickle:
# lists of str and int only, the same interpreter at both ends, and nothing it reads can run code.
_CHILD = """
import marshal, sys, toktok
read, write = sys.stdin.buffer, sys.stdout.buffer
while (head := read.read(8)) and len(head) == 8:
    texts, encoding, threads = marshal.loads(read.read(int.from_bytes(head, "little")))
    try:
        reply = (toktok.batch_count(texts, encoding, threads=threads), None)
    except Exception as exc:
        reply = (None, repr(exc))
    body = marshal.dumps(reply)
    write.write(len(body).to_bytes(8, "little") + body)
    write.flush()
"""


class _Counter:
    """One counting process and its pipes. Requests are answered in order; ``send`` does not wait,
    so a warm-up (loading a vocabulary) runs while this process does other work."""

    def __init__(self) -> None:
        # -I: the child needs toktok only, and nothing from the working directory or environment;
        # a session of its own: a Ctrl-C at the terminal stops the run softly, and must not kill the
        # count it is waiting for (the child ends when its pipe closes, whatever ends this process)
        self._proc = subprocess.Popen([sys.executable, "-I", "-c", _CHILD], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        self._unread = 0  # replies sent for and not yet read (a warm-up's)

    def send(self, texts: list[str], encoding: str) -> None:
        assert self._proc.stdin is not None
        body = marshal.dumps((texts, encoding, THREADS))
        self._proc.stdin.write(len(body).to_bytes(8, "little") + body)
        self._proc.stdin.flush()
        self._unread += 1

    def receive(self) -> list[int] | None:
        """The next reply: the counts, or None when the child could not count (the caller counts)."""
        assert self._proc.stdout is not None
        head = self._proc.stdout.read(8)
        if len(head) < 8:
            raise OSError("the counting process ended")
        counts, error = marshal.loads(self._proc.stdout.read(int.from_bytes(head, "little")))
        self._unread -= 1
        return None if error is not None else counts

    def count(self, texts: list[str], encoding: str) -> list[int] | None:
        while self._unread:
            self.receive()
        self.send(texts, encoding)
        return self.receive()

    def close(self) -> None:
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe is not None:
                pipe.close()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


_lock = threading.Lock()  # one request at a time on the pipes; one load of a vocabulary here
_counter: _Counter | None = None
_here: set[str] = set()  # encodings this process has loaded itself
_loading: threading.Thread | None = None  # ``preload(here=True)``'s


def preload(encoding: str = DEFAULT_ENCODING, *, here: bool = False) -> None:
    """Start loading ``encoding``'s vocabulary (~0.4 s for o200k) so that it is ready by the time
    the preflight counts: the CLI calls this before it imports polars and reads the input. In the
    counting process by default; ``here=True`` in this process (a background thread, the GIL
    released), for a caller that will count all along (a cost cap, an estimate)."""
    global _counter, _loading
    if here:
        if _loading is None and encoding not in _here:
            _loading = threading.Thread(target=_count_here, args=([""], encoding), daemon=True,
                                        name="momo-batch tokenizer load")
            _loading.start()
        return
    with _lock:
        if _counter is None and not _here:
            try:
                _counter = _Counter()
                _counter.send([""], encoding)
            except OSError:  # no process to be had: the counts are made here
                _counter = None


def _count_here(texts: list[str], encoding: str) -> list[int]:
    counts = toktok.batch_count(texts, encoding, threads=THREADS)
    _here.add(encoding)
    return counts


def _wait_for_preload() -> None:
    # two threads loading one vocabulary would each build it: the counting one waits instead
    global _loading
    if _loading is not None:
        _loading.join()
        _loading = None


def count_tokens(texts: Sequence[str], encoding: str = DEFAULT_ENCODING) -> list[int]:
    """Token count of each text, in order: in the counting process, unless this process already
    holds ``encoding`` (or no process can be started)."""
    _wait_for_preload()
    counts: list[int] = []
    with _lock:
        for i in range(0, len(texts), CHUNK):
            chunk = list(texts[i:i + CHUNK])
            counts += _count_chunk(chunk, encoding)
    return counts


def _count_chunk(chunk: list[str], encoding: str) -> list[int]:
    global _counter
    if encoding not in _here:
        try:
            if _counter is None:
                _counter = _Counter()
            counted = _counter.count(chunk, encoding)
            if counted is not None:
                return counted
        except OSError:  # the process died (or never started): count here from now on
            _end_counter()
    return _count_here(chunk, encoding)  # also raises what toktok raises (an unknown encoding)


def count_one(text: str, encoding: str = DEFAULT_ENCODING) -> int:
    """Token count of one text, in this process (a call's worst case comes at every call: no round
    trip to another process). The first one loads the vocabulary here and ends the counting process."""
    _wait_for_preload()
    with _lock:
        if encoding not in _here:
            _end_counter()
        return _count_here([text], encoding)[0]


def release() -> None:
    """End the counting process, and the memory of its vocabularies with it (the next bulk count
    starts another, ~0.4 s). A vocabulary this process loaded itself (:func:`count_one`) stays."""
    _wait_for_preload()
    with _lock:
        _end_counter()


def _end_counter() -> None:
    global _counter
    if _counter is not None:
        _counter.close()
        _counter = None


atexit.register(_end_counter)  # the child would end when its pipe closes anyway; this waits for it
