"""A local server that implements both APIs of ``/work/shared/api-contract.md`` strictly.

It is a second, independent reading of the contract (it imports nothing else from ``pipeline``),
with seeded faults, scaled-down rate windows and a request log, so the client can be tested
and benchmarked without network or money.

    with Sandbox(SandboxConfig(window_seconds=2.0)).running() as sb:
        ...  # MOMO at sb.momo_url, the relay at sb.relay_url; sb.records() is the request log
"""

from .catalog import RELAY_PRICES, Price
from .config import (
    DEFAULT_KEYS,
    DEFAULT_RELAY_KEYS,
    FaultConfig,
    KeyConfig,
    NewApiConfig,
    RelayKeyConfig,
    SandboxConfig,
)
from .log import fingerprint
from .server import Sandbox, build_app, serve_forever

__all__ = [
    "DEFAULT_KEYS",
    "DEFAULT_RELAY_KEYS",
    "RELAY_PRICES",
    "FaultConfig",
    "KeyConfig",
    "NewApiConfig",
    "Price",
    "RelayKeyConfig",
    "Sandbox",
    "SandboxConfig",
    "build_app",
    "fingerprint",
    "serve_forever",
]
