"""Switchyard's local inference engine: paged KV cache, continuous batching, a full sampler.

Imports nothing from ``gateway`` or ``providers``.

The names below load on first use (PEP 562): the engine's modules import
torch, which takes seconds, and a process that only reads settings
(``local_engine.config``, ``local_engine.bundled``) must not pay for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import EngineConfig
    from .errors import (
        CompletionTooLong,
        EngineNotReady,
        InvalidInput,
        InvalidLoraAdapter,
        LoraLimitReached,
        LoraNotLoaded,
        PromptTooLong,
        StepFailed,
    )
    from .llm import LLM
    from .llm_engine import LLMEngine
    from .outputs import CompletionOutput, RequestOutput, TokenLogprob
    from .sampling_params import SamplingParams

# Each public name, and the module that defines it.
_EXPORTS = {
    "LLM": ".llm",
    "CompletionOutput": ".outputs",
    "CompletionTooLong": ".errors",
    "EngineConfig": ".config",
    "EngineNotReady": ".errors",
    "InvalidInput": ".errors",
    "InvalidLoraAdapter": ".errors",
    "LoraLimitReached": ".errors",
    "LoraNotLoaded": ".errors",
    "LLMEngine": ".llm_engine",
    "PromptTooLong": ".errors",
    "RequestOutput": ".outputs",
    "SamplingParams": ".sampling_params",
    "StepFailed": ".errors",
    "TokenLogprob": ".outputs",
}

__all__ = [
    "LLM",
    "CompletionOutput",
    "CompletionTooLong",
    "EngineConfig",
    "EngineNotReady",
    "InvalidInput",
    "InvalidLoraAdapter",
    "LLMEngine",
    "LoraLimitReached",
    "LoraNotLoaded",
    "PromptTooLong",
    "RequestOutput",
    "SamplingParams",
    "StepFailed",
    "TokenLogprob",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
