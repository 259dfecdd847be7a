"""Credentials and providers as the Python API's user builds them (the README's Python blocks)."""

from __future__ import annotations

import anyio
import pytest

from pipeline import Credentials, open_provider
from pipeline.config import ProviderConfig
from pipeline.errors import ConfigError

MOMO = ProviderConfig(kind="momo", agent_id=159)


def test_from_env_reads_what_the_cli_reads() -> None:
    env = {"MOMO_API_KEY": "momo-sandbox-pro", "MOMO_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_BASE_URL": "x"}
    creds = Credentials.from_env(MOMO, env)
    assert (creds.api_key, creds.base_url) == ("momo-sandbox-pro", "http://127.0.0.1:9/v1")
    assert "momo-sandbox-pro" not in repr(creds)
    relay = ProviderConfig(kind="openai", model="m", api_key_env="MY_KEY", access_token_env="MY_TOKEN")
    creds = Credentials.from_env(relay, {"MY_KEY": "sk-1", "MY_TOKEN": "t", "RELAY_USER_ID": "7",
                                         "MOMO_BASE_URL": "not this one"})
    assert (creds.api_key, creds.access_token, creds.user_id, creds.base_url) == ("sk-1", "t", "7", None)


def test_a_missing_key_names_the_variable_and_the_sandbox() -> None:
    with pytest.raises(ConfigError, match=r"set the environment variable MOMO_API_KEY .*--sandbox"):
        Credentials.from_env(MOMO, {})


def test_the_credentials_base_url_is_where_the_provider_goes() -> None:
    job_url = ProviderConfig(kind="momo", agent_id=159, base_url="http://job.example/v1")
    creds = Credentials("momo-sandbox-pro", base_url="http://env.example/v1")
    assert open_provider(job_url, creds).endpoint == "http://env.example/v1"  # type: ignore[attr-defined]
    assert open_provider(job_url, creds, base_url="http://flag.example/v1").endpoint == "http://flag.example/v1"  # type: ignore[attr-defined]
    assert open_provider(job_url, Credentials("k")).endpoint == "http://job.example/v1"  # type: ignore[attr-defined]


def test_a_provider_serves_one_event_loop_after_another(sandbox: object) -> None:
    """``anyio.run(...)`` twice on one provider: each loop's connections are closed with it, and
    the next loop opens its own (the README's Python API block does this)."""
    url = sandbox.momo_url  # type: ignore[attr-defined]
    provider = open_provider(MOMO, Credentials("momo-sandbox-pro", base_url=url))
    first = anyio.run(provider.account)
    second = anyio.run(provider.account)  # was: RuntimeError "Event loop is closed"
    anyio.run(provider.aclose)
    assert first.remaining == second.remaining == 1000 and first.currency == "CNY"
