"""Turns a scheduled step into one forward pass and one sampling call.

The step's tokens are laid out flat, sequence after sequence::

    seq A: prefill chunk of 3    seq B: decode    seq C: decode
    input_ids  [a5 a6 a7 | b9 | c4]
    positions  [ 5  6  7 |  9 |  4]     (AttentionMetadata derives them from the lengths)
    query_lens [3, 1, 1]   context_lens [8, 10, 5]

Logits are computed only for the last token of each sequence whose tokens
are now all computed (a prefill chunk that ends mid-prompt samples nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention import AttentionMetadata
from .kv_cache import KVCache
from .model import LlamaForCausalLM
from .sampler import SampledToken, Sampler, SamplingRow
from .scheduler import SchedulerOutput
from .sequence import Sequence


@dataclass(frozen=True, slots=True)
class StepResult:
    sampled: list[tuple[Sequence, SampledToken]]  # sequences that got a new token this step


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, kv_cache: KVCache, sampler: Sampler, block_size: int) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.sampler = sampler
        self.block_size = block_size
        self.device = model.device

    @torch.inference_mode()
    def run(self, step: SchedulerOutput) -> StepResult:
        input_ids: list[int] = []
        query_lens: list[int] = []
        context_lens: list[int] = []
        block_tables: list[list[int]] = []
        sample_rows: list[int] = []
        sampled_seqs: list[Sequence] = []
        for item in step.scheduled:
            seq = item.seq
            start = seq.num_computed_tokens
            end = start + item.num_new_tokens
            input_ids.extend(seq.token_ids[start:end])
            query_lens.append(item.num_new_tokens)
            context_lens.append(end)
            block_tables.append(seq.block_table)
            if end == seq.num_tokens:
                sample_rows.append(len(input_ids) - 1)
                sampled_seqs.append(seq)
        metadata = AttentionMetadata.build(query_lens, context_lens, block_tables, self.block_size, self.device)
        hidden = self.model.forward(
            torch.tensor(input_ids, dtype=torch.long, device=self.device), metadata.positions, metadata, self.kv_cache
        )
        if not sampled_seqs:
            return StepResult([])
        logits = self.model.compute_logits(hidden[torch.tensor(sample_rows, device=self.device)])
        rows = [
            SamplingRow(
                seq.params,
                # Copying a long sequence's tokens every step is waste unless the sampler reads them.
                seq.prompt_token_ids if seq.params.repetition_penalty != 1.0 else (),
                seq.output_token_ids if seq.params.reads_output_tokens else (),
                seq.generator,
            )
            for seq in sampled_seqs
        ]
        return StepResult(list(zip(sampled_seqs, self.sampler(logits, rows))))
