"""What the gateway knows about each provider ``type:`` before reading config.

A preset is data: where the provider lives, how it takes its key, which
environment variable the key is read from when the config names none, which
endpoints it offers, and its parameter map (``providers.params``). Quirks
belong here, not in ``if provider == ...`` branches. docs/providers.md cites
the provider's documentation for each entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from .base import Endpoint
from .params import Rule, Translate, Unsupported

CHAT_ONLY = frozenset({Endpoint.CHAT})
ALL_ENDPOINTS = frozenset(Endpoint)


@dataclass(frozen=True, slots=True)
class ProviderPreset:
    base_url: str | None
    api_key_env: str | None
    # A custom server (vLLM, llama.cpp, another Switchyard) often needs no key.
    requires_api_key: bool = True
    # How the key is sent: "Authorization: Bearer <key>", or Azure's "api-key: <key>".
    auth: Literal["bearer", "api-key"] = "bearer"
    # Where requests go: "{base_url}/{endpoint}", or Azure's per-deployment URLs.
    url_style: Literal["openai", "azure"] = "openai"
    api_version: str | None = None  # Azure's api-version query parameter
    endpoints: frozenset[Endpoint] = ALL_ENDPOINTS
    # Rules for chat and completions parameters; a parameter not listed is forwarded.
    params: Mapping[str, Rule] = field(default_factory=dict)


# Reasoning-era OpenAI renamed max_tokens; providers that kept the old name get it translated.
_MAX_TOKENS = {"max_completion_tokens": Translate("max_tokens")}

PRESETS: dict[str, ProviderPreset] = {
    "openai": ProviderPreset(base_url="https://api.openai.com/v1", api_key_env="OPENAI_API_KEY"),
    "custom": ProviderPreset(base_url=None, api_key_env=None, requires_api_key=False),
}
