"""Headless Chromium driven over the DevTools protocol on a pipe: no port, no extra package.

``--remote-debugging-pipe`` makes Chromium read JSON commands, each ended by a NUL byte, on its
file descriptor 3 and write answers and events on 4. Reads block until Chromium answers; a
Chromium that dies closes its end, which ends any read with an error instead of a hang.

    python -m tests.browser PAGE.html SHOT.png    # the top of a report, down to its cost chart
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# as the machine notes advise: no background requests (refused on a closed network), no GPU
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
         "--remote-debugging-pipe")


TRAMPOLINE = ("import os, sys; r, w = map(int, sys.argv[1:3]); os.dup2(r, 3); os.dup2(w, 4); "
              "os.close(r); os.close(w); os.execv(sys.argv[3], sys.argv[3:])")


def find_chromium() -> str | None:
    """``$CHROMIUM``, else the first Chromium on PATH."""
    named = os.environ.get("CHROMIUM")
    if named:
        return shutil.which(named) or (named if Path(named).is_file() else None)
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)


class BrowserError(RuntimeError):
    """Chromium exited, or answered a command with an error."""


@dataclass
class PageLoad:
    """What loading one page showed: problems reported, requests made, and the session to query."""

    console: list[str] = field(default_factory=list)  # console errors and warnings, exceptions
    log: list[str] = field(default_factory=list)  # browser log entries (CSP, failed loads) of level error
    requests: list[str] = field(default_factory=list)  # every URL the page asked for


class Chromium:
    """One headless Chromium process; ``with Chromium() as b: b.open(path)``."""

    def __init__(self, binary: str | None = None, width: int = 1240, height: int = 900) -> None:
        self.binary = binary or find_chromium()
        if not self.binary:
            raise BrowserError("no Chromium found (install Debian's chromium, or set CHROMIUM)")
        self.size = (width, height)
        self._next = 0
        self._buffer = b""
        self._session: str | None = None

    def __enter__(self) -> Chromium:
        self._profile = tempfile.TemporaryDirectory(prefix="momo-chromium-")
        self._stderr = tempfile.TemporaryFile()
        to_child, self._to_browser = os.pipe()
        self._from_browser, from_child = os.pipe()
        # Chromium's ends become its fds 3 and 4 in a fresh interpreter that then execs it: no
        # Python code runs between fork and exec (unsafe beside polars' threads). Moved above 9
        # first, so that neither dup2 overwrites the other end.
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_child, from_child)]
        for fd in (to_child, from_child):
            os.close(fd)
        self._proc = subprocess.Popen(
            [sys.executable, "-c", TRAMPOLINE, *map(str, ends),
             self.binary, *FLAGS, f"--user-data-dir={self._profile.name}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr, pass_fds=ends,
        )
        for fd in ends:
            os.close(fd)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(BrowserError, OSError):  # already gone
            self.send("Browser.close")
        try:
            self._proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        self._stderr.close()
        self._profile.cleanup()

    # -- protocol ------------------------------------------------------------------------------
    def send(self, method: str, events: list[dict[str, Any]] | None = None, **params: Any) -> dict[str, Any]:
        """Send one command and block for its answer; events that arrive meanwhile go to ``events``."""
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if self._session and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if events is not None and "method" in reply:
                events.append(reply)

    def wait_for(self, event: str, events: list[dict[str, Any]]) -> None:
        """Block until ``event`` arrives (or has arrived), keeping every event in ``events``."""
        while not any(e["method"] == event for e in events):
            events.append(self._read())

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise BrowserError(f"Chromium exited (code {self._proc.poll()}): {self.stderr()[-2000:]}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    # -- pages ---------------------------------------------------------------------------------
    def open(self, page: Path) -> PageLoad:
        """Load ``page`` in a fresh tab and wait for its load event."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        events: list[dict[str, Any]] = []
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", events)
        width, height = self.size
        self.send("Emulation.setDeviceMetricsOverride", events, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)
        events.clear()  # about:blank's own
        self.send("Page.navigate", events, url=page.resolve().as_uri())
        self.wait_for("Page.loadEventFired", events)
        self.evaluate("1", events)  # a round trip: every event of the load has arrived before it
        return _summarise(events)

    def evaluate(self, expression: str, events: list[dict[str, Any]] | None = None) -> Any:
        """The JSON value of ``expression`` in the page."""
        result = self.send("Runtime.evaluate", events, expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"evaluate: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, height: int, scale: float = 1.0) -> bytes:
        """PNG of the top ``height`` CSS pixels of the page, at ``scale``."""
        clip = {"x": 0, "y": 0, "width": self.size[0], "height": height, "scale": scale}
        shot = self.send("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)
        return base64.b64decode(shot["data"])


def _summarise(events: list[dict[str, Any]]) -> PageLoad:
    load = PageLoad()
    for e in events:
        p = e.get("params", {})
        if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
            load.console.append(" ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
        elif e["method"] == "Runtime.exceptionThrown":
            load.console.append(str(p.get("exceptionDetails", {}).get("text")))
        elif e["method"] == "Log.entryAdded" and p["entry"].get("level") in ("error", "warning"):
            load.log.append(f"{p['entry'].get('source')}: {p['entry'].get('text')}")
        elif e["method"] == "Network.requestWillBeSent":
            load.requests.append(p["request"]["url"])
    return load


def screenshot(page: Path, target: Path, *, until: str = "#cost-time", width: int = 1240,
               scale: float = 0.75) -> Path:
    """A small PNG of ``page`` from its top to the bottom of the element ``until`` (palette colours)."""
    from PIL import Image

    with Chromium(width=width) as browser:
        browser.open(page)
        bottom = browser.evaluate(f"document.querySelector({json.dumps(until)}).getBoundingClientRect().bottom")
        png = browser.screenshot(int(bottom) + 14, scale)
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target, optimize=True)
    return target


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m tests.browser PAGE.html SHOT.png")
    print(screenshot(Path(sys.argv[1]), Path(sys.argv[2])))
