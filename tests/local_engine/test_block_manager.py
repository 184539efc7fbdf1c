from __future__ import annotations

from local_engine.block_manager import BlockManager
from local_engine.sampling_params import SamplingParams
from local_engine.sequence import Sequence


def seq_of(tokens: list[int], num_prompt: int | None = None) -> Sequence:
    return Sequence("r", 0, list(tokens), num_prompt if num_prompt is not None else len(tokens), SamplingParams())


def run_prefill(manager: BlockManager, seq: Sequence) -> None:
    """Admit ``seq`` the way the scheduler does and mark its prompt computed."""
    cached = manager.cached_prefix(seq.token_ids, seq.logits_from)
    assert manager.allocate(seq, seq.num_tokens - len(cached) * manager.block_size, cached)
    seq.num_computed_tokens = seq.num_tokens
    manager.cache_full_blocks(seq)


def test_allocation_covers_the_tokens_and_free_returns_everything() -> None:
    manager = BlockManager(num_blocks=8, block_size=4)
    seq = seq_of(list(range(10)))
    assert manager.allocate(seq, 10)
    assert len(seq.block_table) == 3 and manager.num_free_blocks == 5
    seq.num_computed_tokens = 10
    # Appending within the last block needs nothing; crossing into a new one needs a block.
    assert manager.allocate(seq, 2) and len(seq.block_table) == 3
    seq.num_computed_tokens = 12
    assert manager.allocate(seq, 1) and len(seq.block_table) == 4
    manager.free(seq)
    assert manager.num_free_blocks == 8 and seq.block_table == [] and seq.num_computed_tokens == 0


def test_allocation_that_does_not_fit_changes_nothing() -> None:
    manager = BlockManager(num_blocks=2, block_size=4)
    seq = seq_of(list(range(9)))
    assert not manager.allocate(seq, 9)
    assert seq.block_table == [] and manager.num_free_blocks == 2


def test_shared_prompt_prefix_shares_blocks() -> None:
    manager = BlockManager(num_blocks=16, block_size=4)
    system = [7] * 8
    first = seq_of(system + [1, 2, 3])
    run_prefill(manager, first)
    second = seq_of(system + [4, 5])
    cached = manager.cached_prefix(second.token_ids, second.logits_from)
    assert cached == first.block_table[:2]
    assert manager.allocate(second, second.num_tokens - 8, cached)
    assert second.num_computed_tokens == 8
    assert second.block_table[:2] == first.block_table[:2] and second.block_table[2] != first.block_table[2]
    assert [manager.blocks[b].ref_count for b in first.block_table] == [2, 2, 1]
    assert manager.prefix_hits == 2


def test_whole_prompt_in_cache_still_computes_its_last_block() -> None:
    manager = BlockManager(num_blocks=16, block_size=4)
    first = seq_of(list(range(8)))
    run_prefill(manager, first)
    again = seq_of(list(range(8)))
    # Only the first block: the last prompt token must run to give logits.
    assert manager.cached_prefix(again.token_ids, again.logits_from) == first.block_table[:1]


def test_freed_blocks_stay_findable_until_reused() -> None:
    manager = BlockManager(num_blocks=4, block_size=4)
    first = seq_of(list(range(9)))
    run_prefill(manager, first)
    kept = list(first.block_table)
    manager.free(first)
    assert manager.num_free_blocks == 4
    again = seq_of(list(range(9)))
    cached = manager.cached_prefix(again.token_ids, again.logits_from)
    assert cached == kept[:2]
    assert manager.allocate(again, 1, cached)
    assert manager.num_free_blocks == 1  # two revived from the cache, one new


def test_reused_block_is_no_longer_found() -> None:
    manager = BlockManager(num_blocks=2, block_size=4)
    first = seq_of([1, 2, 3, 4, 5])
    run_prefill(manager, first)
    manager.free(first)
    other = seq_of([9, 9, 9, 9, 9, 9, 9, 9])  # takes both blocks, evicting the cached one
    run_prefill(manager, other)
    manager.free(other)
    assert manager.cached_prefix([1, 2, 3, 4, 5], 4) == []


def test_hash_collisions_cost_a_miss_never_a_wrong_block() -> None:
    manager = BlockManager(num_blocks=16, block_size=2, hash_fn=lambda parent, tokens: 42)
    first = seq_of([1, 1, 2, 2, 3])
    run_prefill(manager, first)
    # Same hash, other tokens: must not match.
    assert manager.cached_prefix([5, 5, 2, 2, 3], 4) == []
    # Same tokens in block 1 but a different block 0: the child must not match either.
    other = seq_of([6, 6, 2, 2, 3])
    run_prefill(manager, other)
    assert manager.cached_prefix([6, 6, 2, 2, 9], 4) == []
    # The first block registered under the colliding key is still found for its own tokens.
    assert manager.cached_prefix([1, 1, 7, 7, 3], 4) == first.block_table[:1]


def test_prefix_caching_off() -> None:
    manager = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    first = seq_of(list(range(9)))
    run_prefill(manager, first)
    assert manager.cached_prefix(list(range(9)), 8) == []


def test_freed_blocks_are_reused_before_untouched_memory_and_cached_prefixes_last() -> None:
    first_uses: list[int] = []
    manager = BlockManager(num_blocks=6, block_size=4, on_first_use=first_uses.append)
    a = seq_of(list(range(6)))  # one full block (hashed: a cached prefix) and a partial one (not)
    run_prefill(manager, a)
    assert first_uses == [0, 1]
    manager.free(a)

    b = seq_of([90, 91])  # needs one block: the freed partial one, no new memory
    assert manager.allocate(b, 2) and b.block_table == [1] and first_uses == [0, 1]
    c = seq_of(list(range(100, 116)))  # four blocks: untouched ones, while a's cached prefix stays findable
    assert manager.allocate(c, 16) and first_uses == [0, 1, 2, 3, 4, 5]
    assert manager.cached_prefix(list(range(6)), 5) == [0]
    manager.free(b)
    manager.free(c)
    d = seq_of(list(range(200, 224)))  # all six blocks: the cached prefix is evicted last
    assert manager.allocate(d, 24) and d.block_table[-1] == 0
    assert manager.cached_prefix(list(range(6)), 5) == []


def test_without_prefix_caching_the_warmest_freed_block_is_reused() -> None:
    first_uses: list[int] = []
    manager = BlockManager(num_blocks=64, block_size=4, enable_prefix_caching=False, on_first_use=first_uses.append)
    for _ in range(100):  # a steady trickle of short requests touches one block, not the whole pool
        seq = seq_of([1, 2, 3])
        assert manager.allocate(seq, 3)
        manager.free(seq)
    assert first_uses == [0]
