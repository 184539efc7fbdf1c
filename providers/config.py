"""How to reach one provider: the ``providers:`` entries of ``providers.yaml``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from .presets import PRESETS, ProviderPreset


class ProviderConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str = Field(description="Preset name: " + ", ".join(PRESETS))
    base_url: str | None = Field(None, description="Overrides the preset's URL; required for `custom`.")
    api_key: SecretStr | None = Field(None, description="Sent as the preset says (Bearer, or Azure's api-key); never logged.")
    auth: Literal["bearer", "api-key"] | None = Field(
        None, description="How the key is sent; default: the preset's (`bearer` for an Azure Entra ID token)."
    )
    api_version: str | None = Field(None, description="Azure's api-version; default: the preset's.")
    timeout: float = Field(600.0, gt=0, description="Seconds to wait for each read of a non-streamed answer.")
    connect_timeout: float = Field(10.0, gt=0, description="Seconds to open a connection.")
    max_connections: int = Field(1000, ge=1, description="Pooled connections to this upstream.")
    keepalive_timeout: float = Field(30.0, gt=0, description="Seconds an idle pooled connection is kept open.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra headers on every upstream request.")

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in PRESETS:
            raise ValueError(f"unknown provider type {value!r}; expected one of: {', '.join(PRESETS)}")
        return value

    @field_validator("api_key")
    @classmethod
    def _empty_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        # `${KEY:-}` with KEY unset yields "", which means "no key".
        return value if value is not None and value.get_secret_value() else None

    @model_validator(mode="after")
    def _has_base_url(self) -> ProviderConfig:
        if self.resolved_base_url is None:
            raise ValueError(f"provider type {self.type!r} needs base_url")
        return self

    @property
    def preset(self) -> ProviderPreset:
        return PRESETS[self.type]

    @property
    def resolved_base_url(self) -> str | None:
        url = self.base_url or PRESETS[self.type].base_url
        return url.rstrip("/") if url else None
