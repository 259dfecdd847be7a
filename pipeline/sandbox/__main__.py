"""``python -m pipeline.sandbox --port N [--host H] [--config file.toml]``: serve until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from .config import SandboxConfig
from .server import serve_forever


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.sandbox", description=__doc__)
    parser.add_argument("--port", type=int, default=8765, help="port to bind (0: ephemeral)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--config", type=Path, default=None, help="sandbox config (TOML)")
    args = parser.parse_args(argv)
    config = SandboxConfig.from_toml(args.config) if args.config else SandboxConfig()
    with contextlib.suppress(KeyboardInterrupt):
        serve_forever(config, host=args.host, port=args.port,
                      on_ready=lambda url: print(f"sandbox listening on {url}", flush=True))


if __name__ == "__main__":
    main()
