"""The batches' process-wide parts, made once from ``server:`` and kept across configuration reloads (in ``Services``)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.batches.bodies import FileBodies
from gateway.batches.runner import BatchRunner
from gateway.batches.store import BatchStore, open_batch_store
from gateway.batches.targets import Serving
from gateway.config import ServerConfig
from gateway.webhooks import WebhookSender


@dataclass(frozen=True, slots=True)
class Batches:
    store: BatchStore
    bodies: FileBodies
    runner: BatchRunner
    max_file_bytes: int

    @classmethod
    def open(cls, server: ServerConfig, webhooks: WebhookSender | None, serving: Serving) -> Batches:
        """Nothing is opened yet: the store at its first call, the runner at the gateway's start (``start``)."""
        store, bodies = open_batch_store(server), FileBodies.of(server)
        runner = BatchRunner(store, bodies, serving, server.batch_concurrency, webhooks)
        return cls(store, bodies, runner, server.max_file_bytes)

    async def start(self) -> None:
        """Resume the unfinished batches: once the gateway has started (providers, ledger, webhooks)."""
        await self.runner.start()

    async def aclose(self) -> None:
        """Drain the lines in flight while the relay and the ledger still take them, then close the store."""
        await self.runner.aclose()
        await self.store.aclose()
