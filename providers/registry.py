"""Build provider adapters from their configuration."""

from __future__ import annotations

from collections.abc import Mapping

from providers.base import Provider
from providers.config import ProviderConfig
from providers.openai_compatible import OpenAICompatibleProvider


def build_provider(name: str, config: ProviderConfig) -> Provider:
    """The adapter for one configured provider.

    Every hosted preset speaks OpenAI's protocol; the local engine is
    chosen by data on its preset. The engine is imported only when a local
    provider is configured: torch takes seconds to import.
    """
    if config.preset.local:
        from providers.local.provider import LocalProvider

        return LocalProvider(name, config)
    return OpenAICompatibleProvider(name, config)


def build_providers(configs: Mapping[str, ProviderConfig]) -> dict[str, Provider]:
    return {name: build_provider(name, config) for name, config in configs.items()}
