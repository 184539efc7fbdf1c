"""The tiny random Llama the fast tests build: small enough to run in milliseconds."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaForCausalLM as HFLlama
from transformers import PreTrainedTokenizerBase

from local_engine.loader import LoadedModel
from local_engine.model import LlamaForCausalLM

TINY = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


def tiny_loaded(hf_model: HFLlama, tokenizer: PreTrainedTokenizerBase) -> LoadedModel:
    """``hf_model`` as the engine's loader would hand it over, in float32 on the CPU, context 256."""
    return LoadedModel(
        model=LlamaForCausalLM.from_transformers(hf_model, torch.float32, torch.device("cpu")),
        tokenizer=tokenizer,
        name="tiny-llama",
        eos_token_ids=frozenset({tokenizer.eos_token_id}),
        max_model_len=256,
        model_dir=Path("tiny-llama"),
    )
