"""How to reach one provider: the ``providers:`` entries of ``providers.yaml``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from providers.presets import PRESETS, ProviderPreset


LOCAL_FIELDS = frozenset(
    {"model", "tokenizer", "device", "dtype", "max_num_seqs", "kv_cache_bytes", "block_size", "max_model_len",
     "quantization", "load_retries", "input_token_ids"}
)


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
    # type: local only -- the engine in this process (docs/local.md)
    model: str | None = Field(
        None, description="local: a model directory, a .gguf file, `smollm2` or `all-minilm-l6-v2` (the bundled ones)."
    )
    tokenizer: str | None = Field(None, description="local: a tokenizer directory, if not the model's own.")
    device: str = Field("auto", description="local: auto (CUDA when present), cpu, cuda, cuda:1, ...")
    dtype: str = Field("auto", description="local: auto, float32, bfloat16, float16.")
    max_num_seqs: int = Field(64, ge=1, description="local: sequences decoded together.")
    kv_cache_bytes: int | None = Field(
        None, gt=0, description="local: the KV cache's size; default on CPU 32768 tokens' worth (at least one "
        "context, at most 10% of RAM), on CUDA 10% of free memory.",
    )
    block_size: int = Field(16, ge=1, description="local: tokens per KV-cache block.")
    max_model_len: int | None = Field(None, ge=1, description="local: context length; default the model's own.")
    quantization: Literal["int4", "int8", "w8a8"] | None = Field(None, description="local, CPU: weight quantization.")
    load_retries: int = Field(
        2, ge=0, description="local: loads retried (after 1 s, 2 s, ...) before the model is declared failed."
    )
    # OpenAI defines token-id `input` in its own tokenizer's ids, and the clients that send ids mean those:
    # LangChain's OpenAIEmbeddings tokenizes every text with tiktoken (cl100k_base) and sends the ids. Read
    # as the local model's ids they index the wrong rows, or none. So by default they are decoded to text
    # with cl100k_base and tokenized again by the model; `model` is vLLM's reading, for clients that
    # tokenize with the served model's own tokenizer.
    input_token_ids: Literal["cl100k_base", "model"] = Field(
        "cl100k_base",
        description="local embeddings: whose token ids a token-id `input` holds: `cl100k_base` (OpenAI's, "
        "as LangChain sends them; decoded, then tokenized by the model) or `model` (the model's own, as vLLM).",
    )

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
        if self.preset.local:
            misplaced = sorted(self.model_fields_set & {"base_url", "api_key", "auth", "api_version"})
            if misplaced:
                raise ValueError(f"a local provider takes no {', '.join(misplaced)}")
            return self
        local_only = sorted(self.model_fields_set & LOCAL_FIELDS)
        if local_only:
            raise ValueError(f"{', '.join(local_only)}: only for `type: local`")
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
