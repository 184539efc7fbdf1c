"""How to reach one provider: the ``providers:`` entries of ``providers.yaml``.

An entry has one of two shapes, chosen by its ``type``::

    HostedProviderConfig    every preset but `local`: an upstream over HTTP (here)
    LocalProviderConfig     `type: local`: the bundled engine in this process (providers/local/config.py)

``ProviderConfig`` is their union, discriminated on ``type``: a field of one
shape given to the other is refused at load, so no combination that nothing
would read can be built. A hosted entry and its preset are resolved once,
by :meth:`HostedProviderConfig.resolve`, into a :class:`ResolvedProvider`:
what the HTTP adapter, the Python client and ``switchyard check-config``
read. A local entry gives the engine its settings with
:meth:`LocalProviderConfig.engine_config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    TypeAdapter,
    field_validator,
    model_validator,
)  # fmt: skip

from providers.local.config import LocalProviderConfig
from providers.presets import PRESETS, ProviderPreset

AuthStyle = Literal["bearer", "api-key", "x-api-key"]


@dataclass(frozen=True, slots=True)
class ResolvedProvider:
    """A hosted provider's config over its preset, resolved: where requests go, with which key, sent how."""

    type: str
    preset: ProviderPreset
    base_url: str  # without a trailing slash
    api_key: str | None  # from the config, else from the preset's environment variable when one was given
    auth: AuthStyle
    api_version: str | None  # Azure's api-version query parameter
    headers: Mapping[str, str]  # extra headers on every request: the preset's, under the config's

    @property
    def url_style(self) -> Literal["openai", "azure"]:
        """``openai``: ``{base_url}/{endpoint}``; ``azure``: per-deployment URLs with ``api-version``."""
        return self.preset.url_style

    @property
    def needs_key(self) -> bool:
        """The provider takes no call without a key, and none was given."""
        return self.preset.requires_api_key and not self.api_key

    def auth_headers(self) -> dict[str, str]:
        """The key as the upstream takes it: ``Authorization: Bearer <key>``, Azure's ``api-key: <key>``
        or Anthropic's ``x-api-key: <key>``."""
        if not self.api_key:
            return {}
        if self.auth in ("api-key", "x-api-key"):
            return {self.auth: self.api_key}
        return {"authorization": f"Bearer {self.api_key}"}


class HostedProviderConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str = Field(description="Preset name: " + ", ".join(name for name, preset in PRESETS.items() if not preset.local))
    base_url: str | None = Field(None, description="Overrides the preset's URL; required for `custom`.")
    api_key: SecretStr | None = Field(
        None, description="Sent as the preset says (Bearer, Azure's api-key, Anthropic's x-api-key); never logged."
    )
    auth: AuthStyle | None = Field(
        None, description="How the key is sent; default: the preset's (`bearer` for an Azure Entra ID token)."
    )
    api_version: str | None = Field(None, description="Azure's api-version; default: the preset's.")
    timeout: float = Field(600.0, gt=0, description="Seconds to wait for each read of a non-streamed answer.")
    connect_timeout: float = Field(10.0, gt=0, description="Seconds to open a connection.")
    max_connections: int = Field(1000, ge=1, description="Pooled connections to this upstream.")
    keepalive_timeout: float = Field(30.0, gt=0, description="Seconds an idle pooled connection is kept open.")
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Extra headers on every upstream request; they override the preset's (Anthropic's anthropic-version).",
    )

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in PRESETS:
            raise ValueError(f"unknown provider type {value!r}; expected one of: {', '.join(PRESETS)}")
        if PRESETS[value].local:
            raise ValueError(f"provider type {value!r} runs the engine in the gateway's process, not over HTTP")
        return value

    @field_validator("api_key")
    @classmethod
    def _empty_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        # `${KEY:-}` with KEY unset yields "", which means "no key".
        return value if value is not None and value.get_secret_value() else None

    @model_validator(mode="after")
    def _has_base_url(self) -> HostedProviderConfig:
        if self.resolved_base_url is None:
            raise ValueError(f"provider type {self.type!r} needs base_url")
        return self

    @property
    def preset(self) -> ProviderPreset:
        return PRESETS[self.type]

    @property
    def resolved_base_url(self) -> str | None:
        url = self.base_url or self.preset.base_url
        return url.rstrip("/") if url else None

    def resolve(self, environ: Mapping[str, str] | None = None) -> ResolvedProvider:
        """This config over its preset. ``environ``: where to look for the key when the config has none
        (the gateway's config module has put it in the config already; the Python client passes its own)."""
        base_url = self.resolved_base_url
        assert base_url is not None  # _has_base_url
        preset = self.preset
        api_key = self.api_key.get_secret_value() if self.api_key else None
        return ResolvedProvider(
            type=self.type,
            preset=preset,
            base_url=base_url,
            api_key=api_key or (preset.key_from(environ) if environ is not None else None),
            auth=self.auth or preset.auth,
            api_version=self.api_version or preset.api_version,
            headers=_merged_headers(preset.headers, self.headers),
        )


def _merged_headers(preset: Mapping[str, str], config: Mapping[str, str]) -> dict[str, str]:
    """The preset's headers under the config's; header names are case-insensitive, so a config's
    ``Anthropic-Version`` replaces the preset's ``anthropic-version``."""
    overridden = {name.lower() for name in config}
    return {**{name: value for name, value in preset.items() if name.lower() not in overridden}, **config}


# The union's tags, one per shape. Its errors carry the tag in their location
# (`providers.x.hosted.type`); the gateway's config module reports them without it.
PROVIDER_SHAPES = frozenset({"hosted", "local"})


def _shape(entry: Any) -> str:
    """Which shape an entry has: its ``type`` says (an unknown type is a hosted one, refused there by name)."""
    kind = entry.get("type") if isinstance(entry, Mapping) else getattr(entry, "type", None)
    preset = PRESETS.get(kind) if isinstance(kind, str) else None
    return "local" if preset is not None and preset.local else "hosted"


def _no_fields_of_the_other_shape(entry: Any) -> Any:
    """A field of the other shape (a local ``model`` on a hosted provider) is named as such, not as unknown."""
    if not isinstance(entry, Mapping):
        return entry
    local = _shape(entry) == "local"
    own, other = (LocalProviderConfig, HostedProviderConfig) if local else (HostedProviderConfig, LocalProviderConfig)
    misplaced = sorted(set(entry) & (set(other.model_fields) - set(own.model_fields)))
    if misplaced and local:
        raise ValueError(f"a local provider takes no {', '.join(misplaced)}")
    if misplaced:
        raise ValueError(f"{', '.join(misplaced)}: only for `type: local`")
    return entry


ProviderConfig = Annotated[
    Annotated[HostedProviderConfig, Tag("hosted")] | Annotated[LocalProviderConfig, Tag("local")],
    Discriminator(_shape),
    BeforeValidator(_no_fields_of_the_other_shape),
]

_ADAPTER: TypeAdapter[HostedProviderConfig | LocalProviderConfig] = TypeAdapter(ProviderConfig)


def provider_config(entry: Mapping[str, Any]) -> HostedProviderConfig | LocalProviderConfig:
    """One ``providers:`` entry, validated into its shape (pydantic's ValidationError naming the field if not)."""
    return _ADAPTER.validate_python(entry)
