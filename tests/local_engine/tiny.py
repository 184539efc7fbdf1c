"""The tiny random Llama the fast tests build: small enough to run in milliseconds."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, PreTrainedTokenizerBase
from transformers import LlamaForCausalLM as HFLlama

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

# SmolLM2's tokenizer: a model this wide emits any of its tokens, and its outputs decode to text.
SMOLLM2_VOCAB = 49152


def random_llama(
    vocab_size: int = SMOLLM2_VOCAB, context: int = 256, tokenizer: PreTrainedTokenizerBase | None = None
) -> HFLlama:
    """TINY's shape, ``vocab_size`` rows, tied embeddings, random weights from seed 0 (the same every call).

    ``tokenizer``: its BOS and EOS ids go into the config (for a model saved and loaded as a directory).
    """
    torch.manual_seed(0)
    special = {} if tokenizer is None else {"eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id}
    config = LlamaConfig(**{**TINY, "vocab_size": vocab_size, "max_position_embeddings": context},
                         tie_word_embeddings=True, **special)  # fmt: skip
    return HFLlama(config).eval()


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
