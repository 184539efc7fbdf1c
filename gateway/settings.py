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
