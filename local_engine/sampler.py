"""Choose every sequence's next token from one batch of logits, each by its own parameters.

Each stage runs, vectorised, on only the rows that use it; a batch of greedy
rows with nothing to adjust is one argmax::

    raw logits ──► log_softmax ──► logprobs            (rows that asked; the model's own distribution)
        │
        ▼  apply_logit_processors
    logit_bias ─► min_tokens ─► repetition_penalty ─► presence/frequency_penalty
        │
        ├─ greedy rows ──► argmax
        └─ other rows ───► ÷ temperature ─► softmax ─► drop probs below the row's floor ─► race
                                                       floor = max(top_k/top_p cut, min_p × top prob)

The race: with q_i ~ Exponential(1), argmax_i p_i / q_i is token i with
probability p_i (and p need not be normalised). A seeded row draws its
``vocab`` noise values from its own generator, exactly once per call, so its
tokens do not depend on what else shares the batch; unseeded rows draw
together from the sampler's shared generator.
"""

from __future__ import annotations

import array
import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from .logprobs import token_logprobs
from .sampling_params import SamplingParams

# Top-k/top-p candidates are found with topk at these widths before falling
# back to the whole vocabulary: a full sort of 64 x 49k logits takes 0.13-0.4 s on
# two CPU cores, topk(256) 8-17 ms, and most nuclei are small. A row's width
# depends only on its own top_k and logits, never on its neighbours.
_CANDIDATE_WIDTHS = (256, 4096)


@dataclass(slots=True)
class SamplingRow:
    """One sequence in the batch, in batch order."""

    params: SamplingParams
    prompt_token_ids: Sequence[int]  # read only when repetition_penalty != 1
    output_token_ids: Sequence[int]
    generator: torch.Generator | None = None  # seeded requests; None draws from the sampler's own


@dataclass(frozen=True, slots=True)
class SampledToken:
    token_id: int
    logprob: float | None  # None unless params.logprobs is not None
    top_logprobs: dict[int, float] | None  # the params.logprobs most likely tokens, most likely first


class Sampler:
    def __init__(self, eos_token_ids: Collection[int], *, generator: torch.Generator | None = None) -> None:
        """``generator`` serves the unseeded rows; it must live on the logits' device.

        Without one, the sampler makes one per device, seeded from the OS.
        """
        self.eos_token_ids = tuple(eos_token_ids)
        self._generators: dict[torch.device, torch.Generator] = {}
        if generator is not None:
            self._generators[generator.device] = generator

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, rows: list[SamplingRow]) -> list[SampledToken]:
        if logits.dim() != 2 or logits.shape[0] != len(rows):
            raise ValueError(f"logits {tuple(logits.shape)} do not match {len(rows)} rows")
        logits = logits.float()  # the same tensor when already float32; never modified below
        processed = apply_logit_processors(logits, rows, self.eos_token_ids)
        sampled = [i for i, row in enumerate(rows) if not row.params.greedy]
        if not sampled:
            token_ids = processed.argmax(dim=-1)
        else:
            token_ids = torch.empty(len(rows), dtype=torch.long, device=logits.device)
            greedy = [i for i, row in enumerate(rows) if row.params.greedy]
            if greedy:
                positions = torch.tensor(greedy, device=logits.device)
                token_ids[positions] = processed[positions].argmax(dim=-1)
            positions, choices = self._sample(processed, rows, sampled)
            token_ids[positions] = choices
        return self._results(logits, rows, token_ids)

    def _sample(
        self, logits: torch.Tensor, rows: list[SamplingRow], sampled: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Race the non-greedy rows; return (their batch positions, their tokens)."""
        device, vocab = logits.device, logits.shape[1]
        # Unseeded rows first, so that they share one batched draw.
        unseeded = [i for i in sampled if rows[i].generator is None]
        seeded = [i for i in sampled if rows[i].generator is not None]
        order = unseeded + seeded
        params = [rows[i].params for i in order]
        positions = torch.tensor(order, device=device)
        scaled = logits[positions]  # a copy: safe to work on in place
        temperatures = [p.temperature for p in params]
        if any(t != 1.0 for t in temperatures):
            scaled.div_(torch.tensor(temperatures, device=device).unsqueeze(1))
        probs = scaled.softmax(dim=-1)

        floor = _truncation_floor(probs, params)
        min_ps = [p.min_p for p in params]
        if any(min_ps):
            min_p_floor = torch.tensor(min_ps, device=device) * probs.amax(dim=-1)
            floor = min_p_floor if floor is None else torch.maximum(floor, min_p_floor)
        if floor is not None:
            probs.masked_fill_(probs < floor.unsqueeze(1), 0.0)

        # log U for U ~ Uniform[0, 1) is -q with q ~ Exponential(1) (uniform_ then log_
        # is a third of exponential_'s cost on CPU), so argmax p / q = argmin p / log U.
        # log U is in [-inf, 0): never 0, so no 0/0.
        noise = torch.empty((len(order), vocab), dtype=probs.dtype, device=device)
        if unseeded:
            noise[: len(unseeded)].uniform_(generator=self._shared_generator(device))
        for offset, i in enumerate(seeded, start=len(unseeded)):
            noise[offset].uniform_(generator=rows[i].generator)
        choices = probs.div_(noise.log_()).argmin(dim=-1)
        return positions, choices

    def _shared_generator(self, device: torch.device) -> torch.Generator:
        generator = self._generators.get(device)
        if generator is None:
            generator = torch.Generator(device=device)
            generator.seed()
            self._generators[device] = generator
        return generator

    def _results(self, logits: torch.Tensor, rows: list[SamplingRow], token_ids: torch.Tensor) -> list[SampledToken]:
        tokens: list[int] = token_ids.tolist()
        wanting = [i for i, row in enumerate(rows) if row.params.logprobs is not None]
        if not wanting:
            return [SampledToken(token, None, None) for token in tokens]
        if len(wanting) == len(rows):
            raw, chosen_ids = logits, token_ids
        else:
            positions = torch.tensor(wanting, device=logits.device)
            raw, chosen_ids = logits[positions], token_ids[positions]
        scored = token_logprobs(raw, chosen_ids, [rows[i].params.logprobs or 0 for i in wanting])
        results = [SampledToken(token, None, None) for token in tokens]
        for i, entry in zip(wanting, scored):
            results[i] = SampledToken(tokens[i], entry.logprob, entry.top_logprobs)
        return results


def apply_logit_processors(
    logits: torch.Tensor, rows: list[SamplingRow], eos_token_ids: Collection[int] = ()
) -> torch.Tensor:
    """Apply logit_bias, min_tokens, repetition_penalty, presence/frequency_penalty, in that order.

    Returns ``logits`` itself when no row uses any of them, else a processed
    copy; never modifies its argument. Token ids outside the vocabulary (in
    logit_bias, stop_token_ids, eos_token_ids) are ignored.
    """
    vocab = logits.shape[1]
    bias = [
        (i, token, value)
        for i, row in enumerate(rows)
        if row.params.logit_bias
        for token, value in row.params.logit_bias.items()
        if 0 <= token < vocab
    ]
    blocked = [(i, token) for i, row in enumerate(rows) for token in _blocked_tokens(row, eos_token_ids, vocab)]
    penalised = [i for i, row in enumerate(rows) if _uses_penalties(row.params)]
    if not (bias or blocked or penalised):
        return logits
    device = logits.device
    processed = logits.clone()
    if bias:
        positions, tokens, values = zip(*bias)
        processed.index_put_(
            (torch.tensor(positions, device=device), torch.tensor(tokens, device=device)),
            torch.tensor(values, dtype=processed.dtype, device=device),
            accumulate=True,
        )
    if blocked:
        positions, tokens = zip(*blocked)
        processed.index_put_(
            (torch.tensor(positions, device=device), torch.tensor(tokens, device=device)),
            torch.tensor(float("-inf"), device=device),
        )
    if penalised:
        _apply_penalties(processed, [rows[i] for i in penalised], torch.tensor(penalised, device=device))
    return processed


def _blocked_tokens(row: SamplingRow, eos_token_ids: Collection[int], vocab: int) -> list[int]:
    """Tokens that would end the sequence before min_tokens outputs exist."""
    params = row.params
    if len(row.output_token_ids) >= params.min_tokens:
        return []
    enders = params.stop_token_ids if params.ignore_eos else (*params.stop_token_ids, *eos_token_ids)
    return [token for token in set(enders) if 0 <= token < vocab]


def _uses_penalties(params: SamplingParams) -> bool:
    return params.repetition_penalty != 1.0 or params.presence_penalty != 0.0 or params.frequency_penalty != 0.0


def _apply_penalties(logits: torch.Tensor, rows: list[SamplingRow], positions: torch.Tensor) -> None:
    """Penalise, in place, the rows of ``logits`` at ``positions`` (one per entry of ``rows``)."""
    device, vocab = logits.device, logits.shape[1]
    penalised = logits[positions]
    output_counts = _token_counts([row.output_token_ids for row in rows], vocab, device)
    repetition = [row.params.repetition_penalty for row in rows]
    if any(r != 1.0 for r in repetition):
        # transformers' RepetitionPenaltyLogitsProcessor, over prompt and output.
        prompts = [row.prompt_token_ids if row.params.repetition_penalty != 1.0 else () for row in rows]
        seen = (_token_counts(prompts, vocab, device) > 0) | (output_counts > 0)
        penalty = torch.tensor(repetition, device=device).unsqueeze(1)
        scaled = torch.where(penalised > 0, penalised / penalty, penalised * penalty)
        penalised = torch.where(seen, scaled, penalised)
    frequency = [row.params.frequency_penalty for row in rows]
    if any(frequency):
        penalised -= torch.tensor(frequency, device=device).unsqueeze(1) * output_counts
    presence = [row.params.presence_penalty for row in rows]
    if any(presence):
        penalised -= torch.tensor(presence, device=device).unsqueeze(1) * (output_counts > 0)
    logits[positions] = penalised


def _token_counts(token_lists: list[Sequence[int]], vocab: int, device: torch.device) -> torch.Tensor:
    """[len(token_lists), vocab] float32: how many times each list holds each token."""
    counts = torch.zeros((len(token_lists), vocab), device=device)
    lengths = [len(tokens) for tokens in token_lists]
    if not any(lengths):
        return counts
    # array('q') then frombuffer is ~5x faster than torch.tensor on a long flat list.
    flat = torch.frombuffer(array.array("q", itertools.chain.from_iterable(token_lists)), dtype=torch.long)
    owners = torch.repeat_interleave(torch.arange(len(token_lists)), torch.tensor(lengths))
    flat_index = (owners * vocab + flat).to(device)
    counts.view(-1).index_add_(0, flat_index, torch.ones(flat_index.shape[0], device=device))
    return counts


def _truncation_floor(probs: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor | None:
    """Per row, the least probability top_k and top_p keep (0 for rows using neither); None if no row uses them.

    top_p is taken over the top_k survivors, renormalised: the kept set is the
    most likely tokens up to and including the first whose running total
    reaches top_p, so always at least one. A token tied with the last kept one
    is kept too.
    """
    vocab = probs.shape[1]
    top_ks = [p.top_k if 0 < p.top_k < vocab else 0 for p in params]
    pending = [j for j, p in enumerate(params) if top_ks[j] or p.top_p < 1.0]
    if not pending:
        return None
    device = probs.device
    floor = torch.zeros(len(params), device=device)
    for width in [w for w in _CANDIDATE_WIDTHS if w < vocab] + [vocab]:
        group = [j for j in pending if top_ks[j] <= width]  # top_k 0 (off) fits every width
        if not group:
            continue
        index = torch.tensor(group, device=device)
        top_k = torch.tensor([top_ks[j] or vocab for j in group], device=device).unsqueeze(1)
        top_p = torch.tensor([params[j].top_p for j in group], device=device).unsqueeze(1)
        rows = probs if len(group) == len(params) else probs[index]
        # Most likely first; at full width a sort is a little faster than topk.
        candidates = rows.topk(width, dim=-1).values if width < vocab else rows.sort(dim=-1, descending=True).values
        within_k = torch.arange(width, device=device) < top_k
        running = (candidates * within_k).cumsum(dim=-1)
        # Rows whose top_k ends inside the candidates renormalise over them; others over everything.
        total = torch.where(top_k <= width, running[:, -1:], torch.ones_like(running[:, -1:]))
        before = (running - candidates) / total  # mass of the more likely candidates
        # top_p 1 cuts nothing: a ratio that rounds to 1.0 must not drop a top_k token.
        num_kept = (within_k & ((before < top_p) | (top_p >= 1.0))).sum(dim=-1)
        # Settled when the cut fell inside the candidates or top_k ended it; others widen.
        settled = (num_kept < width) | (top_k.squeeze(1) <= width)
        kept_floor = candidates.gather(1, (num_kept - 1).unsqueeze(1)).squeeze(1)
        floor[index] = torch.where(settled, kept_floor, 0.0)
        unsettled = [j for j, done in zip(group, settled.tolist()) if not done]
        pending = unsettled + [j for j in pending if top_ks[j] > width]
        if not pending:
            break
    return floor
