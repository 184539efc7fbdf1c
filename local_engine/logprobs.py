"""Log-probabilities of given tokens: a sampled token's, a prompt token's.

Both are read off the raw logits (``log_softmax``, before temperature,
penalties and logit_bias): the model's own distribution, as vLLM and OpenAI
report it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .outputs import TokenLogprob


def token_logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor, num_top: Sequence[int], *, with_rank: bool = False
) -> list[TokenLogprob]:
    """Per row ``i``: the logprob of ``token_ids[i]`` under ``logits[i]`` and the row's ``num_top[i]``
    most likely tokens, most likely first.

    ``with_rank`` adds the token's rank, counted as vLLM counts it: 1 + the
    tokens more likely than it, a tie counting as more likely.
    """
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen_column = logprobs.gather(1, token_ids.unsqueeze(1))
    chosen: list[float] = chosen_column.squeeze(1).tolist()
    ranks: list[int | None] = (
        (logprobs >= chosen_column).sum(dim=-1).tolist() if with_rank else [None] * len(chosen)
    )
    widest = min(max(num_top, default=0), logprobs.shape[1])
    top_values: list[list[float]] = []
    top_ids: list[list[int]] = []
    if widest:
        top = logprobs.topk(widest, dim=-1)
        top_values, top_ids = top.values.tolist(), top.indices.tolist()
    return [
        TokenLogprob(token, chosen[i], dict(zip(top_ids[i][:k], top_values[i][:k])) if k else {}, ranks[i])
        for i, (token, k) in enumerate(zip(token_ids.tolist(), num_top))
    ]
