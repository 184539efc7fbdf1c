"""Continuous batching: which sequences run in the next step, and how many tokens each.

Every step has a token budget (``max_num_batched_tokens``). Running
sequences are served first, those decoding before those still in their
prompt, so a long prompt never stalls the decodes: it is cut into chunks
that take what the budget leaves (chunked prefill). Waiting sequences join
while budget, sequence slots and KV blocks allow. When a running sequence
needs a block and none is free, the newest running sequence is preempted:
its blocks are freed and it goes back to the front of the queue, to be
recomputed later (its prompt blocks are often still in the prefix cache).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .block_manager import BlockManager
from .sequence import Sequence, SequenceStatus


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512


@dataclass(frozen=True, slots=True)
class ScheduledSequence:
    seq: Sequence
    num_new_tokens: int  # tokens seq.token_ids[num_computed : num_computed + num_new_tokens] run this step


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[ScheduledSequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(item.num_new_tokens for item in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled

    def unschedule(self, seq: Sequence) -> int:
        """Drop ``seq`` from this step (it was preempted); return the tokens it had."""
        for position, item in enumerate(self.scheduled):
            if item.seq is seq:
                del self.scheduled[position]
                return item.num_new_tokens
        return 0


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager) -> None:
        self.config = config
        self.block_manager = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0  # since start, for metrics

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> SchedulerOutput:
        output = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        decoding = [seq for seq in self.running if not seq.in_prefill]
        prefilling = [seq for seq in self.running if seq.in_prefill]
        for seq in decoding + prefilling:
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted earlier in this loop
            num_new = min(seq.num_tokens - seq.num_computed_tokens, budget)
            while not self.block_manager.allocate(seq, num_new):
                victim = self.running[-1]
                self._preempt(victim)
                output.preempted.append(victim)
                budget += output.unschedule(victim)
                if victim is seq:
                    break
            else:
                output.scheduled.append(ScheduledSequence(seq, num_new))
                budget -= num_new
        # Admitting new work in the same step that had to preempt would only thrash.
        while self.waiting and budget > 0 and not output.preempted:
            if len(self.running) >= self.config.max_num_seqs:
                break
            seq = self.waiting[0]
            cached = self.block_manager.cached_prefix(seq.token_ids, seq.logits_from, seq.cache_salt)
            num_new = min(seq.num_tokens - len(cached) * self.block_manager.block_size, budget)
            if not self.block_manager.allocate(seq, num_new, cached):
                break
            self.waiting.popleft()
            if not seq.num_preemptions:
                seq.num_cached_tokens = len(cached) * self.block_manager.block_size
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            output.scheduled.append(ScheduledSequence(seq, num_new))
            budget -= num_new
        return output

    def finish(self, seq: Sequence, reason: str) -> None:
        """Take a sequence out of the batch for good and release its blocks."""
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        if seq in self.running:
            self.running.remove(seq)
        else:
            try:
                self.waiting.remove(seq)
            except ValueError:
                pass
        self.block_manager.free(seq)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)  # also resets num_computed_tokens: it will be recomputed
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
