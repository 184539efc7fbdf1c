"""Provider adapters: how the gateway talks to each upstream.

``providers`` never imports ``gateway``; the gateway composes these pieces.
"""

from providers.base import (
    EngineStats,
    HasBatchAPI,
    LoadsModel,
    Provider,
    ReportsEngineStats,
    Tokenizes,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamStream,
)  # fmt: skip
from providers.client import AsyncOpenAICompatibleAPI, ClientConfig, OpenAICompatibleAPI
from providers.config import (
    HostedProviderConfig,
    LocalProviderConfig,
    ProviderConfig,
    ResolvedProvider,
    provider_config,
)
from providers.errors import MissingAPIKey, NotOffered, OpenAIError, ProviderError
from providers.presets import PRESETS, ProviderPreset
from providers.registry import build_provider, build_providers
from providers.wire import Endpoint, RequestTimings, Usage

__all__ = [
    "PRESETS",
    "AsyncOpenAICompatibleAPI",
    "ClientConfig",
    "Endpoint",
    "EngineStats",
    "HostedProviderConfig",
    "HasBatchAPI",
    "LoadsModel",
    "LocalProviderConfig",
    "MissingAPIKey",
    "NotOffered",
    "OpenAIError",
    "OpenAICompatibleAPI",
    "Provider",
    "ProviderConfig",
    "ProviderError",
    "ProviderPreset",
    "ReportsEngineStats",
    "RequestTimings",
    "ResolvedProvider",
    "Tokenizes",
    "UpstreamRequest",
    "UpstreamResponse",
    "UpstreamStream",
    "Usage",
    "build_provider",
    "build_providers",
    "provider_config",
]
