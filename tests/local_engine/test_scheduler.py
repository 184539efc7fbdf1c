from __future__ import annotations

from local_engine.block_manager import BlockManager
from local_engine.sampling_params import SamplingParams
from local_engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from local_engine.sequence import Sequence, SequenceStatus


def make(num_blocks: int = 64, block_size: int = 4, max_tokens: int = 512, max_seqs: int = 8) -> Scheduler:
    return Scheduler(SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=max_tokens), BlockManager(num_blocks, block_size))


def seq_of(length: int, first: int = 0) -> Sequence:
    return Sequence("r", 0, list(range(first, first + length)), length, SamplingParams())


def advance(scheduler: Scheduler, output: SchedulerOutput, next_token: int = 1) -> None:
    """What the engine does after the model ran: count computed tokens, append a sampled one."""
    for item in output.scheduled:
        seq = item.seq
        seq.num_computed_tokens += item.num_new_tokens
        if seq.num_computed_tokens == seq.num_tokens:
            seq.token_ids.append(next_token)
        scheduler.block_manager.cache_full_blocks(seq)


def plan(output: SchedulerOutput) -> list[tuple[Sequence, int]]:
    return [(item.seq, item.num_new_tokens) for item in output.scheduled]


def test_long_prompt_is_cut_into_chunks() -> None:
    scheduler = make(max_tokens=8)
    seq = seq_of(20)
    scheduler.add(seq)
    chunks = []
    while seq.in_prefill:
        output = scheduler.schedule()
        chunks.append(plan(output)[0][1])
        advance(scheduler, output)
    assert chunks == [8, 8, 4]
    assert seq.num_output_tokens == 1


def test_decodes_go_first_and_prefill_takes_what_is_left() -> None:
    scheduler = make(max_tokens=8)
    decoding = seq_of(3)
    scheduler.add(decoding)
    advance(scheduler, scheduler.schedule())
    long_prompt = seq_of(30, first=100)
    scheduler.add(long_prompt)
    output = scheduler.schedule()
    assert plan(output) == [(decoding, 1), (long_prompt, 7)]
    advance(scheduler, output)
    # The running prefill never pushes the decode out.
    assert plan(scheduler.schedule()) == [(decoding, 1), (long_prompt, 7)]


def test_sequence_slots_are_capped() -> None:
    scheduler = make(max_seqs=2)
    for index in range(3):
        scheduler.add(seq_of(4, first=10 * index))
    output = scheduler.schedule()
    assert len(output.scheduled) == 2 and len(scheduler.waiting) == 1


def test_out_of_blocks_preempts_the_newest_and_recomputes_it_later() -> None:
    scheduler = make(num_blocks=4, block_size=2, max_seqs=4)
    old, new = seq_of(3, first=0), seq_of(3, first=50)
    scheduler.add(old)
    scheduler.add(new)
    advance(scheduler, scheduler.schedule())  # both prefilled: 2 blocks each, pool full
    assert scheduler.block_manager.num_free_blocks == 0
    output = scheduler.schedule()  # old needs a third block for its 5th token... after one more decode
    advance(scheduler, output)
    output = scheduler.schedule()
    assert output.preempted == [new]
    assert plan(output) == [(old, 1)]
    assert new.status is SequenceStatus.WAITING and new.num_computed_tokens == 0 and new.block_table == []
    assert scheduler.waiting[0] is new and new.num_preemptions == 1
    advance(scheduler, output)
    scheduler.finish(old, "stop")
    output = scheduler.schedule()
    # Recomputed: its prompt and the tokens it had generated, but for the
    # first block, which the prefix cache still held.
    assert new.token_ids == [50, 51, 52, 1, 1]
    assert plan(output) == [(new, 3)] and new.num_computed_tokens == 2


def test_a_preempted_sequence_leaves_the_step_it_was_scheduled_in() -> None:
    scheduler = make(num_blocks=3, block_size=2, max_seqs=4)
    first, second = seq_of(2, first=0), seq_of(2, first=50)
    scheduler.add(first)
    scheduler.add(second)
    advance(scheduler, scheduler.schedule())  # one block each, then each appends a token
    output = scheduler.schedule()  # both need a second block, only one is free
    assert output.preempted == [second]
    assert plan(output) == [(first, 1)]
    assert all(item.seq.status is SequenceStatus.RUNNING for item in output.scheduled)


def test_finish_frees_blocks_and_leaves_no_trace() -> None:
    scheduler = make()
    seq = seq_of(9)
    scheduler.add(seq)
    advance(scheduler, scheduler.schedule())
    scheduler.finish(seq, "length")
    assert seq.is_finished and seq.finish_reason == "length"
    assert scheduler.block_manager.num_free_blocks == 64
    assert not scheduler.has_unfinished


def test_waiting_sequence_reuses_the_cached_prefix() -> None:
    scheduler = make(block_size=4)
    first = seq_of(12)
    scheduler.add(first)
    advance(scheduler, scheduler.schedule())
    second = seq_of(12)
    scheduler.add(second)
    output = scheduler.schedule()
    # Two of its three blocks come from the cache; the last block is computed.
    assert plan(output) == [(first, 1), (second, 4)]
    assert second.num_computed_tokens == 8
