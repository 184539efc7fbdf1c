"""Switchyard's local inference engine: paged KV cache, continuous batching, a full sampler.

Imports nothing from ``gateway`` or ``providers``.
"""

from .config import EngineConfig
from .llm import LLM
from .llm_engine import LLMEngine, PromptTooLong
from .outputs import CompletionOutput, RequestOutput, TokenLogprob
from .sampling_params import SamplingParams

__all__ = [
    "LLM",
    "CompletionOutput",
    "EngineConfig",
    "LLMEngine",
    "PromptTooLong",
    "RequestOutput",
    "SamplingParams",
    "TokenLogprob",
]
