"""Turns a scheduled step into one forward pass and one sampling call.

The step's tokens are laid out flat, sequence after sequence::

    seq A: prefill chunk of 3    seq B: decode    seq C: decode
    input_ids  [a5 a6 a7 | b9 | c4]
    positions  [ 5  6  7 |  9 |  4]     (AttentionMetadata derives them from the lengths)
    query_lens [3, 1, 1]   context_lens [8, 10, 5]

Logits are computed only for the last token of each sequence whose tokens
are now all computed (a prefill chunk that ends mid-prompt samples nothing),
and for the prompt positions of a sequence that asks for prompt logprobs.
Token ``t`` is scored by the logits at position ``t - 1``, so a chunk scores
the token after each of its positions, the next chunk's first token included::

    prompt p0..p6 in two chunks        (p0 has no logprob: nothing precedes it)
    step 1  positions 0 1 2            score p1 p2 p3
    step 2  positions 3 4 5 6          score p4 p5 p6; position 6 samples the first output token

A request that does not ask costs nothing: no row of its prompt gets logits.

A sequence on a LoRA adapter has its rows grouped with the others of that
adapter (``LoraBatch``): the base model runs every row, each adapter adds its
delta to its own rows, and the base model's rows get none.

A sequence with a grammar (structured outputs) has its row's bitmask filled
on llguidance's threads while the forward pass runs, and applied to its
logits before sampling: the sampler, and the logprobs it reports, see the
constrained distribution, as in vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .attention import AttentionMetadata
from .grammar import StepMasks
from .kv_cache import KVCache
from .logprobs import token_logprobs
from .lora import LoraBatch
from .model import LlamaForCausalLM
from .outputs import TokenLogprob
from .sampler import SampledToken, Sampler, SamplingRow
from .scheduler import SchedulerOutput
from .sequence import Sequence

# Prompt rows get logits this many at a time: [256, vocab] float32 is 50 MB for SmolLM2's 49k vocabulary.
_SCORED_ROWS_PER_PASS = 256


@dataclass(frozen=True, slots=True)
class StepResult:
    sampled: list[tuple[Sequence, SampledToken]]  # sequences that got a new token this step
    # Sequences that scored prompt tokens this step: the logprobs of tokens num_scored_prompt_tokens onwards.
    prompt_logprobs: list[tuple[Sequence, list[TokenLogprob]]] = field(default_factory=list)


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, kv_cache: KVCache, sampler: Sampler, block_size: int) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.sampler = sampler
        self.block_size = block_size
        self.device = model.device
        self.vocab_size = int(model.embed_tokens.shape[0])

    @torch.inference_mode()
    def run(self, step: SchedulerOutput) -> StepResult:
        input_ids: list[int] = []
        query_lens: list[int] = []
        context_lens: list[int] = []
        block_tables: list[list[int]] = []
        sample_rows: list[int] = []
        sampled_seqs: list[Sequence] = []
        scoring = _PromptScoring()
        for item in step.scheduled:
            seq = item.seq
            start = seq.num_computed_tokens
            end = start + item.num_new_tokens
            if seq.wants_prompt_logprobs:
                scoring.add(seq, len(input_ids) - start, end)
            input_ids.extend(seq.token_ids[start:end])
            query_lens.append(item.num_new_tokens)
            context_lens.append(end)
            block_tables.append(seq.block_table)
            # max_tokens 0 asks for the prompt's logprobs alone: nothing is sampled.
            if end == seq.num_tokens and seq.params.max_tokens != 0:
                sample_rows.append(len(input_ids) - 1)
                sampled_seqs.append(seq)
        constrained = [(row, seq) for row, seq in enumerate(sampled_seqs) if seq.matcher is not None]
        masks = StepMasks(constrained, self.vocab_size) if constrained else None
        if masks is not None:
            masks.start()  # on llguidance's threads, while the model runs
        metadata = AttentionMetadata.build(query_lens, context_lens, block_tables, self.block_size, self.device)
        lora = LoraBatch.of_rows((item.seq.lora for item in step.scheduled), query_lens, self.device)
        hidden = self.model.forward(
            torch.tensor(input_ids, dtype=torch.long, device=self.device), metadata.positions, metadata, self.kv_cache,
            lora,
        )
        prompt_logprobs = scoring.run(self.model, hidden) if scoring.rows else []
        if not sampled_seqs:
            return StepResult([], prompt_logprobs)
        logits = self.model.compute_logits(hidden[torch.tensor(sample_rows, device=self.device)])
        if masks is not None:
            masks.apply(logits)
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
        return StepResult(list(zip(sampled_seqs, self.sampler(logits, rows))), prompt_logprobs)


@dataclass(slots=True)
class _PromptScoring:
    """The flat rows of one step whose logits score a prompt token, and the token each one scores."""

    rows: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    num_top: list[int] = field(default_factory=list)
    counts: list[tuple[Sequence, int]] = field(default_factory=list)

    def add(self, seq: Sequence, row_of_position_0: int, end: int) -> None:
        """Score what the positions up to ``end`` can: tokens num_scored_prompt_tokens up to the prompt's last."""
        first, last = seq.num_scored_prompt_tokens, min(end + 1, seq.num_prompt_tokens)
        # The scheduler never skips (prefix cache) a position whose logits are owed (Sequence.logits_from).
        assert first - 1 >= seq.num_computed_tokens, "a prompt position to score was not computed"
        if first >= last:
            return
        self.rows.extend(range(row_of_position_0 + first - 1, row_of_position_0 + last - 1))
        self.targets.extend(seq.token_ids[first:last])
        self.num_top.extend([seq.params.prompt_logprobs or 0] * (last - first))
        self.counts.append((seq, last - first))

    def run(self, model: LlamaForCausalLM, hidden: torch.Tensor) -> list[tuple[Sequence, list[TokenLogprob]]]:
        scored: list[TokenLogprob] = []
        for begin in range(0, len(self.rows), _SCORED_ROWS_PER_PASS):
            window = slice(begin, begin + _SCORED_ROWS_PER_PASS)
            logits = model.compute_logits(hidden[torch.tensor(self.rows[window], device=hidden.device)])
            targets = torch.tensor(self.targets[window], dtype=torch.long, device=hidden.device)
            scored.extend(token_logprobs(logits, targets, self.num_top[window], with_rank=True))
        per_seq: list[tuple[Sequence, list[TokenLogprob]]] = []
        begin = 0
        for seq, count in self.counts:
            per_seq.append((seq, scored[begin : begin + count]))
            begin += count
        return per_seq
