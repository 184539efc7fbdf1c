"""Provider adapters: how the gateway talks to each upstream.

``providers`` never imports ``gateway``; the gateway composes these pieces.
"""

from providers.base import Endpoint, LoadsModel, Provider, UpstreamRequest, UpstreamResponse, UpstreamStream
from providers.client import AsyncOpenAICompatibleAPI, MissingAPIKey, NotOffered, OpenAICompatibleAPI
from providers.config import ProviderConfig
from providers.errors import OpenAIError, ProviderError
from providers.presets import PRESETS, ProviderPreset
from providers.registry import build_provider, build_providers

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
