"""Clients for the two services, and the provider interface the runner uses."""

from .base import Account, CallResult, Price, PromptRequest, Provider, RateLimitInfo
from .momo import Agent, MomoClient, MomoProvider
from .openai import OpenAIClient, OpenAIProvider

__all__ = [
    "Account",
    "Agent",
    "CallResult",
    "MomoClient",
    "MomoProvider",
    "OpenAIClient",
    "OpenAIProvider",
    "Price",
    "PromptRequest",
    "Provider",
    "RateLimitInfo",
]
