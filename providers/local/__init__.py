"""``type: local``: the bundled engine as providers, in the gateway's own process.

::

    config.py                                  LocalProviderConfig: the entry's settings, the engine's EngineConfig
    LocalProvider              provider.py     the model's life cycle, readiness, tokenizer, refusals
    ├── LocalChatProvider      chat.py         a causal LM on AsyncLLMEngine: chat and completions
    └── LocalEmbeddingProvider embeddings.py   a sentence encoder on AsyncEmbedder: embeddings
    translate.py                               OpenAI's requests in, as the engine takes them (pure)
    answers.py                                 the engine's outputs out, as OpenAI's answers (pure)

:func:`build_local_provider` picks the class from the configured model.
Importing this package is cheap; the engine (and torch, seconds to import)
loads only when a local provider is built.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from local_engine.default_model import MINILM, SMOLLM2, BundledModel, default_model_path, is_embedding_model
from providers.local.config import LocalProviderConfig

if TYPE_CHECKING:
    from providers.local.provider import LocalProvider

__all__ = [
    "MINILM", "SMOLLM2", "BundledModel", "LocalProviderConfig", "build_local_provider", "default_model_path",
    "serves_embeddings",
]  # fmt: skip


def serves_embeddings(config: LocalProviderConfig) -> bool:
    """Whether the configured model is a sentence encoder (read without loading it, or torch)."""
    return is_embedding_model(config.model)


def build_local_provider(name: str, config: LocalProviderConfig) -> LocalProvider:
    """A sentence encoder serves embeddings, any other model chat and completions."""
    # Before torch is imported: OpenMP's worker threads otherwise spin on every core between the
    # engine's steps, and the event loop, on one of those cores, relays other answers late
    # (bench/local_first.py: hosted streams 4-7 ms later while the engine ran). The user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if serves_embeddings(config):
        from providers.local.embeddings import LocalEmbeddingProvider

        return LocalEmbeddingProvider(name, config)
    from providers.local.chat import LocalChatProvider

    return LocalChatProvider(name, config)
