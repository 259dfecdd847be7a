"""Build the provider a job asks for, from objects (the CLI reads the environment, not this)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import ProviderConfig
from .errors import ConfigError, check_secret

if TYPE_CHECKING:  # the providers (and httpx) load when a provider is opened, not with the CLI
    from .providers.base import Provider

MOMO_DEFAULT_URL = "https://api.momoai.pro/v1"
RELAY_DEFAULT_URL = "https://api.moka-ai.com"


@dataclass(frozen=True)
class Credentials:
    """Secrets for one provider; kept out of every repr, log and file."""

    api_key: str
    access_token: str | None = None  # relay /api/user/self system token
    user_id: str | None = None
    # where these credentials are valid; ``open_provider``'s ``base_url`` wins, the job's loses
    base_url: str | None = None

    def __repr__(self) -> str:
        return "Credentials(***)"

    @classmethod
    def from_env(cls, cfg: ProviderConfig, environ: Mapping[str, str] | None = None) -> Credentials:
        """The credentials ``momo-batch`` reads for ``cfg``: the key from ``cfg.key_env``
        (``MOMO_API_KEY`` / ``OPENAI_API_KEY``), the base URL from ``MOMO_BASE_URL`` /
        ``OPENAI_BASE_URL``, the relay's token and user id. Only when asked: nothing else in the
        library reads the environment."""
        env = os.environ if environ is None else environ
        key = env.get(cfg.key_env, "")
        if not key:
            raise ConfigError(f"no API key: set the environment variable {cfg.key_env} "
                              "(or add --sandbox to try the job on a local sandbox server with its demo key)")
        token_env = cfg.access_token_env or "RELAY_ACCESS_TOKEN"
        return cls(key, env.get(token_env) or None, env.get("RELAY_USER_ID") or cfg.user_id,
                   base_url=env.get(base_url_env(cfg.kind)) or None)


def base_url_env(kind: str) -> str:
    """The environment variable that names the base URL of a ``kind`` of provider."""
    return "MOMO_BASE_URL" if kind == "momo" else "OPENAI_BASE_URL"


def open_provider(
    cfg: ProviderConfig,
    creds: Credentials,
    *,
    base_url: str | None = None,
    max_connections: int = 100,
    endpoint: str | None = None,
) -> Provider:
    """A provider for ``cfg``; no I/O until it is used. Close it with ``await p.aclose()``.

    ``endpoint`` is what request keys call the service (default: its base URL); ``--sandbox``
    names it "sandbox", as each sandbox has a new port but gives the same answers."""
    provider = _open(cfg, creds, base_url=base_url, max_connections=max_connections)
    if endpoint is not None:
        provider.endpoint = endpoint
    return provider


@dataclass(frozen=True)
class Connection:
    """Where a job's calls go and with what key: enough to open its provider in any process
    (a Ray worker opens its own). The repr hides the key, as :class:`Credentials` does."""

    credentials: Credentials
    base_url: str | None = None
    endpoint: str | None = None  # what request keys call the service (default: the base URL)

    def open(self, cfg: ProviderConfig, *, max_connections: int = 100) -> Provider:
        return open_provider(cfg, self.credentials, base_url=self.base_url, max_connections=max_connections,
                             endpoint=self.endpoint)


def _open(cfg: ProviderConfig, creds: Credentials, *, base_url: str | None, max_connections: int) -> Provider:
    if not creds.api_key:
        raise ConfigError(f"no API key: set {cfg.key_env}")
    check_secret(creds.api_key, f"the API key in {cfg.key_env}")
    if creds.access_token:
        check_secret(creds.access_token, f"the relay access token ({cfg.access_token_env or 'RELAY_ACCESS_TOKEN'})")
    url = base_url or creds.base_url or cfg.base_url
    if cfg.kind == "momo":
        from .providers.momo import MomoClient, MomoProvider

        client = MomoClient(creds.api_key, url or MOMO_DEFAULT_URL, timeout=cfg.timeout,
                            max_connections=max_connections)
        assert cfg.agent_id is not None
        return MomoProvider(client, cfg.agent_id)
    from .providers.openai import OpenAIClient, OpenAIProvider

    if (cfg.prompt_price_per_million is None) != (cfg.completion_price_per_million is None):
        raise ConfigError(
            "provider.prompt_price_per_million and provider.completion_price_per_million go together "
            "(without both, a new-api relay's own /api/pricing prices the model)"
        )
    oclient = OpenAIClient(creds.api_key, url or RELAY_DEFAULT_URL, access_token=creds.access_token,
                           user_id=creds.user_id or cfg.user_id, timeout=cfg.timeout,
                           max_connections=max_connections)
    return OpenAIProvider(oclient, str(cfg.model),
                          prompt_price_per_million=cfg.prompt_price_per_million,
                          completion_price_per_million=cfg.completion_price_per_million,
                          currency=cfg.currency or "USD")
