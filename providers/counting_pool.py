"""Where tokens are counted: in place for a short text, else on threads beside the event loop.

tiktoken releases the GIL while it encodes, so a count on another thread
leaves the loop free. Counted on the loop, one streamed prompt of 30 MB of
one repeated character once kept the gateway from answering anything for
21 s. A hop to a thread costs about 30 µs of the loop's time, more than
counting a short chat in place, hence ``INLINE_COUNT_WORK``.

Counts wait in one queue per process. A count that has started runs to its
end even if its request is cancelled (one of ``server.max_body_bytes``
takes seconds); one still queued is dropped. Each holds its request's text
until it has run, so a caller that need not count now (an estimate after
the answer, for a client that may be gone) asks ``backlog_full()`` first.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")

# Work (see ``counting_work``) done in place, on the caller's thread; more goes to the counting threads.
# Measured on the project's 2-core VM: a hop to a thread and back costs the loop ~30 µs (44 µs wall);
# tiktoken counts plain text at ~0.1 µs a character (so ~300 characters cost a hop) and its
# worst inputs (emoji, digits, one character repeated) at up to ~0.6 µs: 512 costs at most ~0.3 ms.
INLINE_COUNT_WORK = 512
# Counts queued or running past which ``backlog_full()``: at most this many bodies are held for counting.
MAX_BACKLOG = 16


def counting_work(value: Any, limit: int = INLINE_COUNT_WORK) -> int:
    """How much counting ``value`` takes: its strings' characters plus one per item, up to just past ``limit``.

    The walk stops as soon as the total passes ``limit``, so a huge request
    costs no more to size up than a small one. Types are compared exactly:
    JSON decodes to exactly these.
    """
    work = 0
    pending = [value]
    while pending:
        value = pending.pop()
        kind = type(value)
        if kind is str:
            work += len(value)
        elif kind is list or kind is dict or kind is tuple:
            work += len(value)
            if work <= limit:  # so at most ``limit`` items are ever queued here
                pending.extend(value.values() if kind is dict else value)
        if work > limit:
            break
    return work


async def count_off_loop(compute: Callable[[], T], work: int) -> T:
    """``compute()``: in place when ``work`` (see ``counting_work``) is small, else on a counting thread."""
    if work <= INLINE_COUNT_WORK:
        return compute()
    return await _counting_threads().run(compute)


def backlog_full() -> bool:
    """Whether ``MAX_BACKLOG`` counts are queued or running already."""
    return _counting_threads().backlog >= MAX_BACKLOG


class _CountingThreads:
    """The pool, and how many counts it holds.

    At least two threads, so that one long count does not hold up every
    other; one per core but one beyond that, so the event loop keeps a core.
    """

    def __init__(self) -> None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self._executor = ThreadPoolExecutor(max_workers=max(2, cores - 1), thread_name_prefix="switchyard-tokens")
        self._lock = threading.Lock()  # the backlog is lowered on the worker's thread
        self.backlog = 0

    async def run(self, compute: Callable[[], T]) -> T:
        with self._lock:
            self.backlog += 1
        future = self._executor.submit(compute)
        future.add_done_callback(self._finished)  # run, failed or dropped from the queue
        return await asyncio.wrap_future(future)

    def _finished(self, _: object) -> None:
        with self._lock:
            self.backlog -= 1


@cache
def _counting_threads() -> _CountingThreads:
    return _CountingThreads()
