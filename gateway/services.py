"""What lives as long as the process, whichever configuration serves: stores, the limits' state, metrics, senders.

A configuration reload (gateway/reload/) swaps the router, the keys and the
routes built from ``providers.yaml``; these stay, so counters keep counting,
rate windows and budgets keep their state, and nothing opens a store twice.
The ``server:`` fields they are made from change only at a restart
(``gateway.reload.changes.RESTART_ONLY``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from gateway.batches import Batches
from gateway.cache.store import CacheStore
from gateway.config import ConfigError, GatewayConfig, ServerConfig
from gateway.conversations import ResponseStore, open_response_store
from gateway.keys.budgets import BudgetBook, LocalBudgetBook, spent_this_period
from gateway.keys.keyring import KeyRing
from gateway.keys.limits import KeyLimits, LocalKeyLimits
from gateway.ledger import LedgerWriter, open_store
from gateway.telemetry.metrics import GatewayMetrics
from gateway.telemetry.tracing import Tracing, tracing_config
from gateway.webhooks import WebhookSender, WebhookTarget, secret_key
from providers.config import HostedProviderConfig

if TYPE_CHECKING:
    from gateway.reload.generation import Generation


class Services:
    def __init__(self, config: GatewayConfig, version: str) -> None:
        server = config.server
        self.server = server
        self.limits = _key_limits(server)
        self.ledger = LedgerWriter(lambda: open_store(server), server.ledger_flush_interval) if server.usage_ledger else None
        self.responses: ResponseStore | None = open_response_store(server) if server.store_responses else None
        self.budgets = _budget_book(server)
        self.tracing = _tracing(config, version)
        self.webhooks = _webhooks(server)
        self.metrics = GatewayMetrics(self.ledger)
        if self.webhooks is not None:
            self.metrics.watch_webhooks(self.webhooks)
        self._cache_store: CacheStore | None = None
        self._generation: Generation | None = None  # the one serving new requests (``serve``)
        self.batches = Batches.open(server, self.webhooks, lambda: self.generation)

    @property
    def generation(self) -> Generation:
        assert self._generation is not None, "serve(generation) first"
        return self._generation

    def cache_store(self) -> CacheStore:
        """The response cache's store (made at first use): in this process, or Redis with server.redis_url."""
        if self._cache_store is None:
            if self.server.redis_url is None:
                from gateway.cache.store import MemoryStore

                self._cache_store = MemoryStore()
            else:
                from gateway.cache.redis_store import (
                    RedisStore,  # redis is an optional dependency
                )

                self._cache_store = RedisStore(self.server.redis_url.get_secret_value())
        return self._cache_store

    async def start(self) -> None:
        """Once the first generation's providers have started."""
        if self.webhooks is not None:
            await self.webhooks.start()
        if self.ledger is not None:
            await self.ledger.start()
        await self.batches.start()  # last: their lines go through the relay, the ledger and the webhooks

    def serve(self, generation: Generation) -> None:
        """``generation`` serves new requests from now on (at start, and when a reload swaps it in)."""
        self.metrics.serve(generation.router.table)
        if self.tracing is not None:
            self.tracing.describe_providers(*_provider_descriptions(generation.config))
        self._generation = generation

    async def seed_budgets(self, keys: KeyRing, previous: KeyRing | None = None) -> None:
        """Start the keys' budgets from what the ledger says they spent; after a reload, only the budgets that are new."""
        if self.ledger is None:
            return
        if any(key.budget_tokens is not None for key in keys.limited):
            await self.limits.seed_spent(await self.ledger.spent_by_key())  # kept where a total is already held
        held = {(budget.account, budget.period) for budget in previous.dollar_budgets} if previous else set()
        new = {budget: sums for budget, sums in keys.dollar_budgets.items() if (budget.account, budget.period) not in held}
        if new:  # the book adds what it is seeded with: a budget already held is not seeded twice
            await self.budgets.seed(await spent_this_period(self.ledger, new, self.budgets))

    async def close_batches(self) -> None:
        """First at shutdown: the batch lines in flight drain while the relay, ledger and webhooks still take them."""
        await self.batches.aclose()

    async def aclose(self) -> None:
        """Close the stores and senders: the requests have finished (their records and events are queued)."""
        if self.ledger is not None:
            await self.ledger.aclose()
        if self.webhooks is not None:  # after every request's events are queued
            await self.webhooks.aclose()
        if self.responses is not None:
            await self.responses.aclose()
        if self._cache_store is not None:
            await self._cache_store.aclose()
        await self.limits.aclose()
        await self.budgets.aclose()

    async def close_tracing(self) -> None:
        """Last of all: the spans of requests cut short at shutdown go out too."""
        if self.tracing is not None:
            await self.tracing.aclose()


def _provider_descriptions(config: GatewayConfig) -> tuple[dict[str, str], dict[str, str]]:
    """Each provider's type and base URL, as traces name them."""
    kinds = {name: provider.type for name, provider in config.providers.items()}
    urls = {
        name: provider.base_url or provider.preset.base_url or ""
        for name, provider in config.providers.items() if isinstance(provider, HostedProviderConfig)
    }  # fmt: skip
    return kinds, urls


def _tracing(config: GatewayConfig, version: str) -> Tracing | None:
    """Traces over OTLP, when ``server.otel`` or the OTEL_EXPORTER_OTLP_* variables ask for them."""
    otel = tracing_config(config.server, os.environ)
    if otel is None:
        return None
    try:
        return Tracing(otel, *_provider_descriptions(config), config.secrets, version)
    except ModuleNotFoundError as error:
        if not (error.name or "").startswith("opentelemetry"):
            raise  # something else is missing: not ours to name
        asked = "server.otel" if config.server.otel is not None else "OTEL_EXPORTER_OTLP_ENDPOINT"
        raise ConfigError("providers.yaml", [
            f"{asked}: traces need the OpenTelemetry SDK and its OTLP exporter: pip install 'switchyard[otel]'"
        ]) from None  # fmt: skip


def _webhooks(server: ServerConfig) -> WebhookSender | None:
    if not server.webhooks:
        return None
    return WebhookSender([
        WebhookTarget(
            hook.url, frozenset(hook.events), secret_key(hook.secret.get_secret_value()), hook.include_content,
            hook.max_attempts, hook.backoff_initial, hook.backoff_max, hook.timeout,
        )
        for hook in server.webhooks
    ])  # fmt: skip


def _key_limits(server: ServerConfig) -> KeyLimits:
    if server.redis_url is None:
        return LocalKeyLimits()
    from gateway.keys.redis_limits import (
        RedisKeyLimits,  # redis is an optional dependency
    )

    return RedisKeyLimits(server.redis_url.get_secret_value())


def _budget_book(server: ServerConfig) -> BudgetBook:
    timezone = ZoneInfo(server.budget_timezone)
    if server.redis_url is None:
        return LocalBudgetBook(timezone)
    from gateway.keys.redis_budgets import (
        RedisBudgetBook,  # redis is an optional dependency
    )

    return RedisBudgetBook(server.redis_url.get_secret_value(), timezone)
