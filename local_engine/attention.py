"""Attention over the paged KV cache, for a batch that mixes prefill chunks and decodes.

The batch is flat: each sequence's new tokens are consecutive rows, in the
order the sequences are given. For sequence ``i`` with ``q = query_lens[i]``
new tokens and ``c = context_lens[i]`` tokens in the cache after the step::

    token positions      0 .......... c-q-1 | c-q ........ c-1
                         already cached     | new this step (its rows of q/k/v)

    query at position p attends to keys 0..p (causal within the new tokens)

Every step first writes the new K/V at ``slot_mapping``, then reads each
sequence's whole context back through its block table. Two paths:

- decodes (``q == 1``), all in one SDPA call: their blocks are gathered into a
  padded ``[batch, kv_len, heads, dim]`` tensor, and a padding mask hides the
  slots past each context when the contexts differ in length.
- prefill chunks (``q > 1``), one SDPA call each: a chunk that is the whole
  context uses this step's K/V directly with a plain causal mask; a later
  chunk gathers its earlier tokens and uses a causal mask offset by ``c - q``.

The decode gather, block_size 4, two sequences with contexts 6 and 3::

    block tables        [5, 2]  [7]            padded with block 0: [5, 2 | 7, 0]
    k_blocks.index_select(0, [5, 2, 7, 0]) -> [2, 8 slots, KVH, D] -> [:, :6]
    mask                 seq 0: 1 1 1 1 1 1
                         seq 1: 1 1 1 0 0 0    (slots 3.. are padding or another sequence's)

Everything that depends only on the batch's shape is computed once per step
in :meth:`AttentionMetadata.build`, not once per layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .kv_cache import LayerKV


@dataclass(frozen=True, slots=True)
class PrefillChunk:
    """One sequence running more than one new token this step."""

    rows: slice  # its rows in the flat batch
    context_len: int
    # Blocks holding its whole context, and the [q, context_len] causal mask
    # offset by the cached prefix; both None when the chunk is the whole
    # context, so this step's K/V serve as is with a plain causal mask.
    block_ids: torch.Tensor | None
    mask: torch.Tensor | None


@dataclass(frozen=True, slots=True)
class AttentionMetadata:
    num_tokens: int
    positions: torch.Tensor  # [num_tokens] int64, each token's position in its sequence
    slot_mapping: torch.Tensor  # [num_tokens] int64, where each new token's K/V goes
    # Decodes: one row each. ``decode_rows`` is a slice when they are
    # consecutive in the batch (the scheduler puts them first), else an index.
    decode_rows: slice | torch.Tensor | None
    decode_block_ids: torch.Tensor | None  # [num_decodes * blocks of the longest context], row-major
    decode_kv_len: int  # longest decode context
    decode_mask: torch.Tensor | None  # [num_decodes, 1, 1, decode_kv_len] bool; None when all contexts are equal
    prefills: tuple[PrefillChunk, ...]

    @classmethod
    def build(
        cls,
        query_lens: Sequence[int],
        context_lens: Sequence[int],
        block_tables: Sequence[Sequence[int]],
        block_size: int,
        device: torch.device,
    ) -> AttentionMetadata:
        """Everything the forward needs for one step, from each sequence's new and total token counts."""
        num_seqs = len(query_lens)
        if not (num_seqs == len(context_lens) == len(block_tables)) or num_seqs == 0:
            raise ValueError("query_lens, context_lens and block_tables must be non-empty and of equal length")
        for q, c, table in zip(query_lens, context_lens, block_tables):
            if not 0 < q <= c or len(table) * block_size < c:
                raise ValueError(f"bad sequence: {q} new tokens, context {c}, {len(table)} blocks of {block_size}")

        # Padding with block 0 is harmless: padded entries are never read unmasked.
        max_blocks = max(len(table) for table in block_tables)
        tables = torch.tensor([list(table) + [0] * (max_blocks - len(table)) for table in block_tables])
        q_lens = torch.tensor(query_lens)
        ctx_lens = torch.tensor(context_lens)
        num_tokens = int(q_lens.sum())

        # Per token: its sequence, then its position p = (c - q) + offset within the chunk.
        seq_of_token = torch.repeat_interleave(torch.arange(num_seqs), q_lens)
        starts = torch.cumsum(q_lens, 0) - q_lens
        positions = torch.arange(num_tokens) - starts[seq_of_token] + (ctx_lens - q_lens)[seq_of_token]
        slot_mapping = tables[seq_of_token, positions // block_size] * block_size + positions % block_size

        row_starts = starts.tolist()
        decodes = [i for i in range(num_seqs) if query_lens[i] == 1]
        decode_rows: slice | torch.Tensor | None = None
        decode_block_ids = decode_mask = None
        decode_kv_len = 0
        if decodes:
            first = row_starts[decodes[0]]
            rows = [row_starts[i] for i in decodes]
            if rows == list(range(first, first + len(rows))):
                decode_rows = slice(first, first + len(rows))
            else:
                decode_rows = torch.tensor(rows, device=device)
            decode_ctx = ctx_lens[decodes]
            decode_kv_len = int(decode_ctx.max())
            num_blocks = -(-decode_kv_len // block_size)
            decode_block_ids = tables[decodes, :num_blocks].reshape(-1).to(device)
            if int(decode_ctx.min()) != decode_kv_len:
                mask = torch.arange(decode_kv_len)[None, :] < decode_ctx[:, None]
                decode_mask = mask[:, None, None, :].to(device)

        prefills = []
        for i in range(num_seqs):
            q, c = query_lens[i], context_lens[i]
            if q == 1:
                continue
            block_ids = mask = None
            if q < c:
                block_ids = tables[i, : -(-c // block_size)].to(device)
                # Query j sits at position c - q + j and sees keys 0..c - q + j.
                mask = (torch.arange(c)[None, :] <= torch.arange(c - q, c)[:, None]).to(device)
            prefills.append(PrefillChunk(slice(row_starts[i], row_starts[i] + q), c, block_ids, mask))

        return cls(
            num_tokens=num_tokens,
            positions=positions.to(device),
            slot_mapping=slot_mapping.to(device),
            decode_rows=decode_rows,
            decode_block_ids=decode_block_ids,
            decode_kv_len=decode_kv_len,
            decode_mask=decode_mask,
            prefills=tuple(prefills),
        )


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layer_cache: LayerKV,
    metadata: AttentionMetadata,
    scale: float | None = None,
) -> torch.Tensor:
    """Store this step's ``k``/``v`` in the cache, then attend: ``q`` [T, H, D], ``k``/``v`` [T, KVH, D] -> [T, H, D].

    ``H`` must be a multiple of ``KVH`` (grouped-query attention): query head
    ``h`` reads KV head ``h // (H // KVH)``.
    """
    layer_cache.k.index_copy_(0, metadata.slot_mapping, k)
    layer_cache.v.index_copy_(0, metadata.slot_mapping, v)

    rows = metadata.decode_rows
    if rows is not None and not metadata.prefills:
        return _decode_attention(q, layer_cache, metadata, scale)
    if rows is None and len(metadata.prefills) == 1:
        return _prefill_attention(q, k, v, layer_cache, metadata.prefills[0], scale)
    out = torch.empty_like(q)
    if rows is not None:
        out[rows] = _decode_attention(q[rows], layer_cache, metadata, scale)
    for chunk in metadata.prefills:
        out[chunk.rows] = _prefill_attention(q[chunk.rows], k[chunk.rows], v[chunk.rows], layer_cache, chunk, scale)
    return out


def _decode_attention(
    q: torch.Tensor, cache: LayerKV, metadata: AttentionMetadata, scale: float | None
) -> torch.Tensor:
    """One query per sequence, all sequences in one SDPA call.

    The query heads sharing a KV head become that head's "query length"::

        q [B, H, D] -> [B, KVH, H/KVH, D]      k, v [B, KVH, kv_len, D]

    so grouped-query attention needs neither a repeat of K/V nor enable_gqa.
    """
    batch, num_heads, head_dim = q.shape
    num_kv_heads = cache.k.shape[1]
    block_ids = metadata.decode_block_ids
    kv_len = metadata.decode_kv_len
    # index_select copies whole blocks (it is several times faster than k_blocks[tables]):
    # [B * blocks, block_size, KVH, D] -> [B, blocks * block_size, KVH, D] -> [B, KVH, kv_len, D]
    k = cache.k_blocks.index_select(0, block_ids).view(batch, -1, num_kv_heads, head_dim)[:, :kv_len].transpose(1, 2)
    v = cache.v_blocks.index_select(0, block_ids).view(batch, -1, num_kv_heads, head_dim)[:, :kv_len].transpose(1, 2)
    q = q.view(batch, num_kv_heads, num_heads // num_kv_heads, head_dim)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=metadata.decode_mask, scale=scale)
    return out.reshape(batch, num_heads, head_dim)


def _prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cache: LayerKV,
    chunk: PrefillChunk,
    scale: float | None,
) -> torch.Tensor:
    """One sequence's chunk of ``q`` new tokens against its whole context."""
    if chunk.block_ids is not None:
        k = cache.k_blocks.index_select(0, chunk.block_ids).flatten(0, 1)[: chunk.context_len]
        v = cache.v_blocks.index_select(0, chunk.block_ids).flatten(0, 1)[: chunk.context_len]
    # [len, heads, D] -> [1, heads, len, D]
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0),
        k.transpose(0, 1).unsqueeze(0),
        v.transpose(0, 1).unsqueeze(0),
        attn_mask=chunk.mask,
        is_causal=chunk.mask is None,
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )
    return out.squeeze(0).transpose(0, 1)
