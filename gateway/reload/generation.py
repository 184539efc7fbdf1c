"""A generation: one configuration's gateway (its providers, router, keys and layers), and its end."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp

from gateway.config import GatewayConfig
from gateway.keys.keyring import KeyRing
from gateway.routing.router import Router
from providers import LoadsModel, Provider

if TYPE_CHECKING:
    from gateway.cache import ResponseCache
    from gateway.keys.accounting import Accounting
    from gateway.http.shadow import ShadowTraffic

logger = logging.getLogger(__name__)

# What POST /admin/reload calls: reloads the configuration, and answers what changed.
Reload = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(eq=False)
class Generation:
    config: GatewayConfig
    adapters: dict[str, Provider]
    router: Router
    keys: KeyRing
    app: ASGIApp  # the whole stack a client's request goes through
    relay: ASGIApp  # inside the key check: where a batch line goes as its creator's request
    accounting: Accounting
    cache: ResponseCache | None = None
    shadows: ShadowTraffic | None = None
    number: int = 1
    in_flight: int = 0  # its requests being answered (the ReloadableApp counts them)
    # Set once it is replaced and its last request ended; until it is replaced, counting is all a request costs.
    _drained: asyncio.Event | None = None
    _load_watch: asyncio.Task[None] | None = None

    def request_started(self) -> None:
        self.in_flight += 1

    def request_finished(self) -> None:
        self.in_flight -= 1
        if self._drained is not None and not self.in_flight:
            self._drained.set()

    async def drained(self) -> None:
        """Once it no longer takes new requests: return when none of its requests is being answered (streams too)."""
        self._drained = asyncio.Event()
        if self.in_flight:
            await self._drained.wait()

    async def start(self, adapters: Iterable[Provider]) -> None:
        """Start ``adapters`` (those not already running for another generation): local models begin loading."""
        for adapter in adapters:
            await adapter.start()

    def report_load_failure(self, report: Callable[[str], None]) -> None:
        """``report`` the first local model that fails to load for good, if any does."""
        self._load_watch = asyncio.create_task(_first_load_failure(self.router.table.models_loading_here(), report))

    async def retire(self) -> None:
        """Its requests are done: let its background work finish (shadow copies, cache writes)."""
        if self._load_watch is not None:
            self._load_watch.cancel()
        if self.shadows is not None:  # before the ledger closes: a copy cut short is still recorded
            await self.shadows.aclose()
        if self.cache is not None:
            await self.cache.settled()


async def close_adapters(adapters: Iterable[Provider]) -> None:
    """Close each adapter, one failure not keeping the others open."""
    for adapter in adapters:
        try:
            await adapter.aclose()
        except Exception:
            logger.exception("provider %s did not close cleanly", adapter.name)


async def load_failure(adapters: Iterable[Provider]) -> str | None:
    """Wait for the local models among ``adapters`` to load; why the first that failed did, if one did."""
    loading = [adapter for adapter in adapters if isinstance(adapter, LoadsModel)]
    for adapter in loading:
        await adapter.wait_loaded()
    failed = next((adapter for adapter in loading if adapter.state == "failed"), None)
    if failed is None:
        return None
    return failed.error or f"the model of provider '{failed.name}' could not be loaded"


async def _first_load_failure(loading: list[LoadsModel], report: Callable[[str], None]) -> None:
    async def settled(provider: LoadsModel) -> LoadsModel:
        await provider.wait_loaded()
        return provider

    for finished in asyncio.as_completed([settled(provider) for provider in loading]):
        provider = await finished
        if provider.state == "failed":
            report(provider.error or f"the model of provider '{provider.name}' could not be loaded")
            return
