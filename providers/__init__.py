"""Provider adapters: how the gateway talks to each upstream.

``providers`` never imports ``gateway``; the gateway composes these pieces.
"""

from .base import Endpoint, LoadsModel, Provider, UpstreamRequest, UpstreamResponse, UpstreamStream
from .client import AsyncOpenAICompatibleAPI, MissingAPIKey, NotOffered, OpenAICompatibleAPI
from .config import ProviderConfig
from .errors import OpenAIError, ProviderError
from .presets import PRESETS, ProviderPreset
from .registry import build_provider, build_providers

__all__ = [
    "PRESETS",
    "AsyncOpenAICompatibleAPI",
    "MissingAPIKey",
    "NotOffered",
    "OpenAICompatibleAPI",
    "Endpoint",
    "LoadsModel",
    "OpenAIError",
    "Provider",
    "ProviderConfig",
    "ProviderError",
    "ProviderPreset",
    "UpstreamRequest",
    "UpstreamResponse",
    "UpstreamStream",
    "build_provider",
    "build_providers",
]
