"""Shared fixtures: an isolated environment, and sandbox servers on ephemeral ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# no per-example deadline: on a busy machine one example can take 400 ms for no fault of the code
# (a timing bound in a test fails `make test` on a loaded CI machine; speed is `make bench`'s)
settings.register_profile("momo-batch", deadline=None)
settings.load_profile("momo-batch")

ROOT = Path(__file__).resolve().parents[1]

_SECRET_ENV = ("MOMO_API_KEY", "MOMO_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL",
               "RELAY_ACCESS_TOKEN", "RELAY_USER_ID")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's keys or writes outside its own folder."""
    for name in _SECRET_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def sandbox() -> Iterator[object]:
    """A default sandbox server (no faults, real time)."""
    from pipeline.sandbox import Sandbox, SandboxConfig

    with Sandbox(SandboxConfig()).running() as sb:
        yield sb
