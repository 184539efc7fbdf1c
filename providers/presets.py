"""What the gateway knows about each provider ``type:`` before reading config.

A preset is data: where the provider lives and which environment variable its
key is read from when the config names none. Quirks belong here, not in
``if provider == ...`` branches.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProviderPreset:
    base_url: str | None
    api_key_env: str | None
    # A custom server (vLLM, llama.cpp, another Switchyard) often needs no key.
    requires_api_key: bool = True


PRESETS: dict[str, ProviderPreset] = {
    "openai": ProviderPreset(base_url="https://api.openai.com/v1", api_key_env="OPENAI_API_KEY"),
    "custom": ProviderPreset(base_url=None, api_key_env=None, requires_api_key=False),
}
