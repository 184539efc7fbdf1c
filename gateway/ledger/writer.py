"""Batches ledger records off the request path.

A finished request appends its record to a list, which costs the request
nothing it would notice. Every ``flush_interval`` the list is swapped out
and written in one transaction on the ledger's own thread. A clean shutdown
writes what is left; a kill -9 loses at most the records of the last
interval. A batch that fails (the database is down) is kept and tried
again with the next one, up to ``max_pending`` records; past that the
oldest are dropped, counted and logged, so a dead database cannot eat the
gateway's memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from gateway.ledger.records import UsageQuery, UsageRecord
from gateway.ledger.store import LedgerStore

logger = logging.getLogger(__name__)

T = TypeVar("T")


class LedgerWriter:
    def __init__(
        self, open_store: Callable[[], LedgerStore], flush_interval: float = 1.0, max_pending: int = 100_000
    ) -> None:
        self._open_store = open_store
        self._flush_interval = flush_interval
        self._max_pending = max_pending
        self._pending: list[UsageRecord] = []
        self._store: LedgerStore | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="switchyard-ledger")
        self._flusher: asyncio.Task[None] | None = None
        self.written = 0
        self.dropped = 0

    async def start(self) -> None:
        """Open the store (on the ledger thread) and start flushing; raises when the store cannot be opened."""
        self._store = await self._on_thread(self._open_store)
        logger.info("usage ledger: %s, written every %gs", self._store.description, self._flush_interval)
        self._flusher = asyncio.get_running_loop().create_task(self._flush_every_interval())

    @property
    def pending(self) -> int:
        return len(self._pending)

    def record(self, record: UsageRecord) -> None:
        self._pending.append(record)
        overflow = len(self._pending) - self._max_pending
        if overflow > 0:
            del self._pending[:overflow]
            self.dropped += overflow

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch or self._store is None:
            self._pending[:0] = batch
            return
        try:
            await self._on_thread(self._store.append, batch)
        except Exception as error:  # the database is down or refused the batch: keep it for the next try
            logger.error("usage ledger: %d records not written yet, will retry: %s", len(batch), error)
            self._pending[:0] = batch
            return
        self.written += len(batch)

    async def summarize(self, query: UsageQuery) -> list[dict[str, Any]]:
        """Sums per group over what is written, plus the records not flushed yet."""
        await self.flush()
        return await self._on_thread(self._opened().summarize, query)

    async def spent_by_key(self) -> dict[str, int]:
        return await self._on_thread(self._opened().spent_by_key)

    async def aclose(self) -> None:
        """Write every pending record, then close the store."""
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self.flush()
        if self.dropped or self._pending:
            logger.error("usage ledger: %d records lost", self.dropped + len(self._pending))
        if self._store is not None:
            await self._on_thread(self._store.close)
        self._thread.shutdown(wait=True)

    async def _flush_every_interval(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval)
            await self.flush()

    def _opened(self) -> LedgerStore:
        if self._store is None:
            raise RuntimeError("the usage ledger is not started")
        return self._store

    async def _on_thread(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)
