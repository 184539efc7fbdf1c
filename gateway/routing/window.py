"""A deployment's recent outcomes: successes, failures and latency over the last few minutes.

A ring of one-minute buckets, reused for ever::

    minute (clock // 60):  1003  1004  1005  1006  1007  <- now
    slot (minute % 5):        3     4     0     1     2

A record goes to the bucket of the current minute, emptying it first when
it still counts a minute five or more back. A read sums the buckets whose
minute is one of the last five, so the window spans the current, partial
minute and the four before it: between four and five minutes. A record is
O(1), allocates no container (the lists are made once) and, until the
minute ends, costs one clock reading and one comparison to find its bucket
(about 0.25 us in all); a read is O(buckets).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

BUCKETS = 5
BUCKET_SECONDS = 60.0
WINDOW_SECONDS = BUCKETS * BUCKET_SECONDS


@dataclass(frozen=True, slots=True)
class RecentOutcomes:
    """What the window counted: answers and failures, and the latency of the answers that were timed."""

    successes: int
    failures: int
    latency_mean: float | None  # seconds; None: nothing timed in the window
    latency_max: float | None

    @property
    def requests(self) -> int:
        return self.successes + self.failures

    @property
    def error_rate(self) -> float | None:
        """Failures over outcomes; None when there were none."""
        return self.failures / self.requests if self.requests else None


class OutcomeWindow:
    __slots__ = (
        "_clock", "_ends", "_failures", "_latency_count", "_latency_max", "_latency_sum", "_minutes", "_slot",
        "_successes",
    )  # fmt: skip

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._minutes = [-1] * BUCKETS  # the minute each bucket counts; -1: none yet
        self._successes = [0] * BUCKETS
        self._failures = [0] * BUCKETS
        self._latency_count = [0] * BUCKETS
        self._latency_sum = [0.0] * BUCKETS
        self._latency_max = [0.0] * BUCKETS
        # The bucket records go to, and the clock reading at which its minute ends: one comparison per record.
        self._slot = 0
        self._ends = float("-inf")

    def record_success(self) -> None:
        self._successes[self._current()] += 1

    def record_failure(self) -> None:
        self._failures[self._current()] += 1

    def record_latency(self, seconds: float) -> None:
        slot = self._current()
        self._latency_count[slot] += 1
        self._latency_sum[slot] += seconds
        if seconds > self._latency_max[slot]:
            self._latency_max[slot] = seconds

    def read(self) -> RecentOutcomes:
        oldest = int(self._clock() // BUCKET_SECONDS) - BUCKETS + 1
        live = [slot for slot, minute in enumerate(self._minutes) if minute >= oldest]
        timed = sum(self._latency_count[slot] for slot in live)
        return RecentOutcomes(
            successes=sum(self._successes[slot] for slot in live),
            failures=sum(self._failures[slot] for slot in live),
            latency_mean=sum(self._latency_sum[slot] for slot in live) / timed if timed else None,
            latency_max=max(self._latency_max[slot] for slot in live if self._latency_count[slot]) if timed else None,
        )

    def _current(self) -> int:
        """The current minute's bucket, emptied when the minute is new to it."""
        now = self._clock()
        if now < self._ends:
            return self._slot
        minute = int(now // BUCKET_SECONDS)
        slot = self._slot = minute % BUCKETS
        self._ends = (minute + 1) * BUCKET_SECONDS
        if self._minutes[slot] != minute:
            self._minutes[slot] = minute
            self._successes[slot] = self._failures[slot] = self._latency_count[slot] = 0
            self._latency_sum[slot] = self._latency_max[slot] = 0.0
        return slot
