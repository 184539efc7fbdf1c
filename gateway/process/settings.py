"""Process settings from the environment (``SWITCHYARD_*``); flags override them."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class ProcessSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_", frozen=True)

    config: Path | None = None
    host: str | None = None
    port: int | None = None
    log_level: str | None = None


class ModelSettings(BaseSettings):
    """The single-model quick start's variables, named as vLLM-style servers name them (no prefix)."""

    model_config = SettingsConfigDict(env_prefix="", frozen=True)

    model_path: str | None = None
    tokenizer_path: str | None = None
    model_name: str | None = None
