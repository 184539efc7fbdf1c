"""Build provider adapters from their configuration."""

from __future__ import annotations

from collections.abc import Mapping

from providers.anthropic import AnthropicProvider
from providers.base import Provider
from providers.config import HostedProviderConfig, ProviderConfig
from providers.openai_compatible import OpenAICompatibleProvider

# The adapter for each wire protocol a hosted preset speaks (ProviderPreset.protocol).
_HOSTED_ADAPTERS = {"openai": OpenAICompatibleProvider, "anthropic": AnthropicProvider}


def build_provider(name: str, config: ProviderConfig) -> Provider:
    """The adapter for one configured provider.

    A hosted preset's protocol picks the adapter (OpenAI's HTTP API, or
    Anthropic's Messages API); ``type: local`` runs the engine in this process. The engine is imported only when a local
    provider is configured: torch takes seconds to import.
    """
    if isinstance(config, HostedProviderConfig):
        return _HOSTED_ADAPTERS[config.preset.protocol](name, config)
    from providers.local import build_local_provider

    return build_local_provider(name, config)


def build_providers(configs: Mapping[str, ProviderConfig]) -> dict[str, Provider]:
    return {name: build_provider(name, config) for name, config in configs.items()}
