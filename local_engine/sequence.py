"""One generated sequence: its tokens, its place in the KV cache, and its state.

A request with ``n`` outputs becomes ``n`` sequences that share the prompt
(and, through prefix caching, the prompt's full KV blocks).

Invariants:
- ``token_ids`` is the prompt followed by the output tokens.
- ``num_computed_tokens <= len(token_ids)``: the first ``num_computed_tokens``
  tokens have their K/V in the blocks of ``block_table``.
- ``len(block_table) * block_size >= num_computed_tokens``.
- While it owes prompt logprobs, ``num_scored_prompt_tokens >= num_computed_tokens + 1``:
  the next position to run is the one that scores the next unscored token
  (token ``t``'s logprob is read off the logits at position ``t - 1``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

import torch

from .sampling_params import SamplingParams

if TYPE_CHECKING:
    from .lora import LoraAdapter

_seq_ids = itertools.count()


class SequenceStatus(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False, slots=True)
class Sequence:
    request_id: str
    index: int  # which of the request's n outputs this is
    token_ids: list[int]
    num_prompt_tokens: int
    params: SamplingParams
    seq_id: int = field(default_factory=lambda: next(_seq_ids))
    status: SequenceStatus = SequenceStatus.WAITING
    block_table: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens the prefix cache served at first admission
    finish_reason: str | None = None  # "stop", "length" or "abort"
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it
    # A seeded request draws from its own generator, so its text does not
    # depend on what else shares the batch.
    generator: torch.Generator | None = None
    num_preemptions: int = 0
    # Leading prompt tokens whose logprob is known. Token 0 has none (nothing precedes it), so it counts
    # from the start; kept across preemption, so a recomputed prompt never scores a token twice.
    num_scored_prompt_tokens: int = 1
    # The grammar the output must match (llguidance's LLMatcher, local_engine.grammar), advanced on each token.
    matcher: Any = None
    # The LoRA adapter the forward pass applies to its rows; None: the base model.
    lora: LoraAdapter | None = None

    @property
    def cache_salt(self) -> int | None:
        """What its cached KV blocks are keyed by besides its tokens: its LoRA adapter's id, None for the base model."""
        return None if self.lora is None else self.lora.adapter_id

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def wants_prompt_logprobs(self) -> bool:
        """Whether prompt tokens remain to be scored; the first of a request's n sequences scores for all."""
        return (
            self.params.prompt_logprobs is not None
            and self.index == 0
            and self.num_scored_prompt_tokens < self.num_prompt_tokens
        )

    @property
    def logits_from(self) -> int:
        """The first position whose logits are still needed: the prompt's last, to sample the first
        output token, or an earlier one while prompt tokens remain to be scored."""
        if self.wants_prompt_logprobs:
            return self.num_scored_prompt_tokens - 1
        return self.num_prompt_tokens - 1

    @property
    def in_prefill(self) -> bool:
        """True while prompt tokens remain to be computed."""
        return self.num_computed_tokens < self.num_prompt_tokens
