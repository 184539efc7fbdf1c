"""Switchyard's local inference engine: paged KV cache, continuous batching, a full sampler.

Imports nothing from ``gateway`` or ``providers``.
"""

from .config import EngineConfig
from .errors import CompletionTooLong, InvalidInput
from .llm import LLM
from .llm_engine import LLMEngine, PromptTooLong, StepFailed
from .outputs import CompletionOutput, RequestOutput, TokenLogprob
from .sampling_params import SamplingParams

__all__ = [
    "LLM",
    "CompletionOutput",
    "CompletionTooLong",
    "EngineConfig",
    "InvalidInput",
    "LLMEngine",
    "PromptTooLong",
    "RequestOutput",
    "SamplingParams",
    "StepFailed",
    "TokenLogprob",
]
