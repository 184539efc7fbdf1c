"""Build provider adapters from their configuration."""

from __future__ import annotations

from collections.abc import Mapping

from .base import Provider
from .config import ProviderConfig
from .openai_compatible import OpenAICompatibleProvider


def build_provider(name: str, config: ProviderConfig) -> Provider:
    """The adapter for one configured provider.

    Every preset so far speaks OpenAI's protocol; presets that need another
    adapter (the local engine) choose it here, by data on the preset.
    """
    return OpenAICompatibleProvider(name, config)


def build_providers(configs: Mapping[str, ProviderConfig]) -> dict[str, Provider]:
    return {name: build_provider(name, config) for name, config in configs.items()}
