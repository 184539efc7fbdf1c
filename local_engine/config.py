"""Engine settings: one frozen value, validated once."""

from __future__ import annotations

from dataclasses import dataclass

QUANTIZATION_KINDS = ("int4", "int8", "w8a8")  # see local_engine.quantization


@dataclass(frozen=True, slots=True)
class EngineConfig:
    model: str | None = None  # a HF directory, a .gguf file, "smollm2", or None for the embedded default
    dtype: str = "auto"  # "auto", "float32", "bfloat16", "float16"
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    block_size: int = 16  # tokens per KV block
    kv_cache_bytes: int | None = None  # the KV pool's size; None: kv_cache_fraction of memory
    kv_cache_fraction: float = 0.1  # of system RAM on CPU, of free device memory on CUDA
    max_num_seqs: int = 64  # sequences in one batch
    max_num_batched_tokens: int = 512  # tokens in one step (the chunked-prefill budget)
    max_model_len: int | None = None  # None: the model's own context length
    enable_prefix_caching: bool = True
    quantization: str | None = None  # CPU only: "int4"/"int8" weight-only for small batches, "w8a8" for all
    seed: int = 0  # for requests that give no seed
    cache_dir: str | None = None  # converted GGUF weights; None: ~/.cache/switchyard/models
    tokenizer: str | None = None  # a tokenizer directory; None: the model's own
    max_loras: int = 4  # LoRA adapters loaded at once (local_engine.lora); 0: none may be loaded
    max_lora_rank: int = 16  # the largest rank r an adapter may have (vLLM's default)

    def __post_init__(self) -> None:
        problems = [
            message
            for ok, message in [
                (self.block_size >= 1, "block_size must be positive"),
                (self.kv_cache_bytes is None or self.kv_cache_bytes > 0, "kv_cache_bytes must be positive"),
                (0 < self.kv_cache_fraction <= 0.9, "kv_cache_fraction must be in (0, 0.9]"),
                (self.max_num_seqs >= 1, "max_num_seqs must be positive"),
                (self.max_num_batched_tokens >= 1, "max_num_batched_tokens must be positive"),
                (self.max_model_len is None or self.max_model_len >= 1, "max_model_len must be positive"),
                (self.max_loras >= 0, "max_loras must not be negative"),
                (self.max_lora_rank >= 1, "max_lora_rank must be positive"),
                (self.quantization in (None, *QUANTIZATION_KINDS), f"quantization must be None or one of {QUANTIZATION_KINDS}"),
            ]
            if not ok
        ]
        if problems:
            raise ValueError("; ".join(problems))
