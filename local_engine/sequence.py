"""One generated sequence: its tokens, its place in the KV cache, and its state.

A request with ``n`` outputs becomes ``n`` sequences that share the prompt
(and, through prefix caching, the prompt's full KV blocks).

Invariants:
- ``token_ids`` is the prompt followed by the output tokens.
- ``num_computed_tokens <= len(token_ids)``: the first ``num_computed_tokens``
  tokens have their K/V in the blocks of ``block_table``.
- ``len(block_table) * block_size >= num_computed_tokens``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import Enum

import torch

from .sampling_params import SamplingParams

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
    # Per output token: (sampled token's logprob, {token id: logprob} of the top k).
    logprobs: list[tuple[float, dict[int, float]]] = field(default_factory=list)
    num_preemptions: int = 0

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
    def in_prefill(self) -> bool:
        """True while prompt tokens remain to be computed."""
        return self.num_computed_tokens < self.num_prompt_tokens
