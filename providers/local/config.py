"""``type: local``: the settings of a model served in this process (a ``providers:`` entry's local shape)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from local_engine.config import QUANTIZATION_KINDS, EngineConfig
from local_engine.default_model import MINILM, SMOLLM2
from local_engine.tool_calls import TOOL_CALL_FORMATS
from providers.presets import PRESETS, ProviderPreset


class LoraModule(BaseModel):
    """A PEFT LoRA adapter loaded at start, as vLLM's ``--lora-modules name=path``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # As POST /v1/load_lora_adapter takes a lora_name: the model name clients call.
    name: str = Field(min_length=1, max_length=256, description="The model name clients call the adapter by.")
    path: str = Field(min_length=1, description="A PEFT adapter directory (adapter_config.json, "
                      "adapter_model.safetensors).")  # fmt: skip


class LocalProviderConfig(BaseModel):
    """``type: local``: the engine in this process (docs/local.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["local"] = Field(description="`local`: the bundled engine in this process.")
    model: str | None = Field(
        None,
        description=f"A model directory, a .gguf file, `{SMOLLM2.alias}` or `{MINILM.alias}` (the bundled ones); "
        f"default `{SMOLLM2.alias}`.",
    )
    tokenizer: str | None = Field(None, description="A tokenizer directory, if not the model's own.")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    dtype: str = Field("auto", description="auto, float32, bfloat16, float16.")
    max_num_seqs: int = Field(64, ge=1, description="Sequences decoded together.")
    kv_cache_bytes: int | None = Field(
        None, gt=0, description="The KV cache's size; default on CPU 32768 tokens' worth (at least one "
        "context, at most 10% of RAM), on CUDA 10% of free memory.",
    )
    block_size: int = Field(16, ge=1, description="Tokens per KV-cache block.")
    max_model_len: int | None = Field(None, ge=1, description="Context length; default the model's own.")
    quantization: Literal[QUANTIZATION_KINDS] | None = Field(None, description="CPU: weight quantization.")  # type: ignore[valid-type]
    load_retries: int = Field(
        2, ge=0, description="Loads retried (after 1 s, 2 s, ...) before the model is declared failed."
    )
    max_loras: int = Field(
        4, ge=0, description="LoRA adapters loaded at once (POST /v1/load_lora_adapter); 0 refuses every load."
    )
    max_lora_rank: int = Field(16, ge=1, description="The largest rank `r` a LoRA adapter may have.")
    lora_modules: tuple[LoraModule, ...] = Field(
        (), description="LoRA adapters loaded once the model is, before the provider is ready; each a model name "
        "from the start, `parent` the base model.",
    )
    # OpenAI defines token-id `input` in its own tokenizer's ids, and the clients that send ids mean those:
    # LangChain's OpenAIEmbeddings tokenizes every text with tiktoken (cl100k_base) and sends the ids. Read
    # as the local model's ids they index the wrong rows, or none. So by default they are decoded to text
    # with cl100k_base and tokenized again by the model; `model` is vLLM's reading, for clients that
    # tokenize with the served model's own tokenizer.
    input_token_ids: Literal["cl100k_base", "model"] = Field(
        "cl100k_base",
        description="Embeddings: whose token ids a token-id `input` holds: `cl100k_base` (OpenAI's, "
        "as LangChain sends them; decoded, then tokenized by the model) or `model` (the model's own, as vLLM).",
    )

    # How the model writes tool calls, as vLLM's --tool-call-parser; auto reads it from the chat template.
    tool_call_format: Literal[TOOL_CALL_FORMATS] = Field(  # type: ignore[valid-type]
        "auto",
        description="Tool calls: how the model writes them. `auto` picks from the chat template: `hermes` "
        "(<tool_call> JSON </tool_call>: Qwen, Hermes), `mistral` ([TOOL_CALLS] [...]), `llama3` (JSON with "
        "`parameters`), or `generic` for a template without tools (the tools described in the system prompt, "
        "the calls written as hermes writes them; constrained decoding keeps them well formed).",
    )

    @field_validator("lora_modules")
    @classmethod
    def _distinct_and_within_max_loras(cls, modules: tuple[LoraModule, ...], info: ValidationInfo) -> tuple[LoraModule, ...]:
        names = [module.name for module in modules]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"the adapter name {', '.join(map(repr, twice))} is given twice; each must be unique")
        max_loras = info.data.get("max_loras")  # absent when it is itself invalid (reported on its own)
        if max_loras is not None and len(modules) > max_loras:
            raise ValueError(f"{len(modules)} adapters, more than max_loras ({max_loras}) lets the engine hold")
        return modules

    @property
    def preset(self) -> ProviderPreset:
        return PRESETS[self.type]

    @property
    def model_name(self) -> str:
        """What ``model`` loads: the bundled chat model when none is named."""
        return self.model or SMOLLM2.alias

    def engine_config(self) -> EngineConfig:
        """The settings of the inference engine (a causal LM; an embedding model takes device and dtype only)."""
        return EngineConfig(
            model=self.model,
            dtype=self.dtype,
            device=self.device,
            block_size=self.block_size,
            kv_cache_bytes=self.kv_cache_bytes,
            max_num_seqs=self.max_num_seqs,
            max_model_len=self.max_model_len,
            quantization=self.quantization,
            tokenizer=self.tokenizer,
            max_loras=self.max_loras,
            max_lora_rank=self.max_lora_rank,
        )
