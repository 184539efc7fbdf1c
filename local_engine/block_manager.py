"""Paged KV-cache blocks: allocation, reference counts and prefix caching.

The cache is a pool of ``num_blocks`` blocks of ``block_size`` token slots.
A sequence's ``block_table`` lists its blocks in token order::

    block_size = 4, 10 tokens computed
    token index   0 1 2 3 | 4 5 6 7 | 8 9 . .
    block_table [    7    |    2    |    5    ]
    slot(i) = block_table[i // 4] * 4 + i % 4        slot(9) = 5 * 4 + 1 = 21

A block full of computed tokens is keyed by a hash chained to its parent's,
``h1 = H(h0, tokens 4..7)``, so any sequence whose tokens match (a shared
system prompt, the n outputs of one request) can use it instead of
computing it again. A lookup is confirmed by the block's token ids and by
its parent block, so a hash collision can cost a cache miss, never a wrong
answer.

A sequence's ``cache_salt`` (its LoRA adapter's id) starts the chain in place
of the first block's missing parent, ``h0 = H(salt, tokens 0..3)``, and is kept
on every block it keys and confirmed on lookup: the same prompt under two
adapters, or under one and the base model, never shares a block (their K/V differ).

A block with ``ref_count == 0`` is free. Free blocks keep their hash and
stay findable until the pool hands them out again. The pool hands out, in
this order: a freed block holding no cached prefix (its memory is already
touched and its contents are worth nothing), then a block never used (its
memory is first touched now), then the least recently freed cached block
(evicting that prefix). So the process's memory grows only as far as the
traffic needs, and the prefix cache still gets the whole pool before it
evicts anything.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from collections.abc import Sequence as Tokens
from dataclasses import dataclass

from .sequence import Sequence

HashFn = Callable[[int | None, tuple[int, ...]], int]


def hash_block(parent_hash: int | None, token_ids: tuple[int, ...]) -> int:
    """Python's tuple hash: deterministic for ints, and fast."""
    return hash((parent_hash, token_ids))


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: int | None = None
    token_ids: tuple[int, ...] = ()
    parent_id: int | None = None  # the block before this one when it was hashed
    salt: int | None = None  # the cache_salt of the sequence that hashed it


class BlockManager:
    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        *,
        enable_prefix_caching: bool = True,
        hash_fn: HashFn = hash_block,
        on_first_use: Callable[[int], None] | None = None,
    ) -> None:
        """``on_first_use(block_id)`` runs when a block is handed out for the first time (the KV cache zeroes it)."""
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self._hash = hash_fn
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Free block ids by kind (see the module docstring); dicts in least-recently-freed order, for O(1)
        # removal when a cached block is reused. Never-used ids pop lowest first.
        self._free_unhashed: OrderedDict[int, None] = OrderedDict()
        self._free_cached: OrderedDict[int, None] = OrderedDict()
        self._never_used_ids = list(range(num_blocks - 1, -1, -1))
        self._cached: dict[int, int] = {}  # block hash -> block id
        self._num_hashed: dict[int, int] = {}  # seq_id -> leading blocks of its table already hashed
        self._on_first_use = on_first_use
        self.prefix_queries = 0  # prompt blocks looked up
        self.prefix_hits = 0  # of those, found

    @property
    def num_free_blocks(self) -> int:
        return len(self._free_unhashed) + len(self._free_cached) + len(self._never_used_ids)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by sequences."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def cached_prefix(self, token_ids: Tokens[int], logits_from: int, salt: int | None = None) -> list[int]:
        """Ids of the longest run of leading full blocks found in the cache, all before position ``logits_from``,
        hashed under ``salt`` (``Sequence.cache_salt``).

        A cached block has K/V but no logits, so it must end before the
        first position whose logits the sequence needs: the prompt's last
        (``Sequence.logits_from``), to sample the first output token, or an
        earlier one while it still scores its prompt (prompt logprobs).
        """
        if not self.enable_prefix_caching:
            return []
        size = self.block_size
        hits: list[int] = []
        parent_hash: int | None = salt
        for index in range(logits_from // size):
            tokens = tuple(token_ids[index * size : (index + 1) * size])
            block_hash = self._hash(parent_hash, tokens)
            block_id = self._cached.get(block_hash)
            self.prefix_queries += 1
            if block_id is None:
                break
            block = self.blocks[block_id]
            if block.token_ids != tokens or block.parent_id != (hits[-1] if hits else None) or block.salt != salt:
                break  # a hash collision: not the block we are looking for
            self.prefix_hits += 1
            hits.append(block_id)
            parent_hash = block_hash
        return hits

    def allocate(self, seq: Sequence, num_new_tokens: int, cached_blocks: Tokens[int] = ()) -> bool:
        """Give ``seq`` slots for ``num_new_tokens`` more tokens; False, changing nothing, if the pool is short.

        ``cached_blocks`` (from :meth:`cached_prefix`, for a sequence with no
        blocks yet) are shared and count as computed tokens.
        """
        num_computed = seq.num_computed_tokens + len(cached_blocks) * self.block_size
        num_new_blocks = self.blocks_needed(num_computed + num_new_tokens) - len(seq.block_table) - len(cached_blocks)
        num_revived = sum(1 for block_id in cached_blocks if self.blocks[block_id].ref_count == 0)
        if num_new_blocks + num_revived > self.num_free_blocks:
            return False
        for block_id in cached_blocks:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self._free_cached[block_id]  # a findable block has a hash, so it is in this pool
            block.ref_count += 1
            seq.block_table.append(block_id)
        if cached_blocks:
            seq.num_computed_tokens = num_computed
            self._num_hashed[seq.seq_id] = len(cached_blocks)
        for _ in range(max(0, num_new_blocks)):
            seq.block_table.append(self._take_free_block())
        return True

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Make ``seq``'s blocks that are now full of computed tokens findable by others."""
        if not self.enable_prefix_caching:
            return
        size = self.block_size
        num_full = seq.num_computed_tokens // size
        start = self._num_hashed.get(seq.seq_id, 0)
        if start >= num_full:
            return
        table = seq.block_table
        parent = self.blocks[table[start - 1]] if start else None
        for index in range(start, num_full):
            block = self.blocks[table[index]]
            if block.block_hash is None:
                block.token_ids = tuple(seq.token_ids[index * size : (index + 1) * size])
                block.block_hash = self._hash(parent.block_hash if parent else seq.cache_salt, block.token_ids)
                block.parent_id = parent.block_id if parent else None
                block.salt = seq.cache_salt
                # On a collision the first block keeps the key; lookups confirm by tokens.
                self._cached.setdefault(block.block_hash, block.block_id)
            parent = block
        self._num_hashed[seq.seq_id] = num_full

    def free(self, seq: Sequence) -> None:
        """Release ``seq``'s blocks; its hashed blocks stay findable until reused."""
        # Tail blocks first: they are the least likely to be shared, so the first evicted.
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                (self._free_unhashed if block.block_hash is None else self._free_cached)[block_id] = None
        seq.block_table.clear()
        seq.num_computed_tokens = 0
        self._num_hashed.pop(seq.seq_id, None)

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix (vLLM's ``reset_prefix_cache``); False, changing nothing, while a block is in use."""
        if any(block.ref_count for block in self.blocks):
            return False
        for block_id in self._free_cached:
            block = self.blocks[block_id]
            block.block_hash, block.token_ids, block.parent_id, block.salt = None, (), None, None
            self._free_unhashed[block_id] = None
        self._free_cached.clear()
        self._cached.clear()
        return True

    def forget_blocks(self) -> None:
        """Every block back to never used (the KV cache's memory was released): each is zeroed at its next use."""
        assert not any(block.ref_count for block in self.blocks), "a sequence still holds blocks"
        self.blocks = [Block(i) for i in range(self.num_blocks)]
        self._free_unhashed.clear()
        self._free_cached.clear()
        self._cached.clear()
        self._never_used_ids = list(range(self.num_blocks - 1, -1, -1))

    def _take_free_block(self) -> int:
        if self._free_unhashed:
            block_id, _ = self._free_unhashed.popitem(last=True)  # the most recently freed is the warmest
        elif self._never_used_ids:
            block_id = self._never_used_ids.pop()
            if self._on_first_use is not None:
                self._on_first_use(block_id)
        else:
            block_id, _ = self._free_cached.popitem(last=False)
        block = self.blocks[block_id]
        if block.block_hash is not None:
            if self._cached.get(block.block_hash) == block_id:
                del self._cached[block.block_hash]
            block.block_hash = None
            block.token_ids = ()
            block.parent_id = None
            block.salt = None
        block.ref_count = 1
        return block_id
