"""The ASGI app that serves one generation at a time, and swaps in a new one when the configuration is reloaded.

A reload (``POST /admin/reload``, or SIGHUP under ``switchyard serve``)::

    read the file again ─► validate it ─► refuse a change only a restart applies (409)
        ─► keep the providers whose entry is unchanged (a local model is not reloaded)
        ─► build and start the others; wait for new local models to load (a failure: 422, nothing changed)
        ─► assemble the new generation ─► swap: new requests go to it
        ─► the old one's requests finish on its table ─► then the providers it alone had are closed

Each request is counted on the generation that took it, so "finished"
includes streams. Reloads run one at a time (calls made while one waits to
begin share it: it reads the file after each of them), and a reload started
is finished even if the client that asked for it leaves.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any, Protocol

from starlette.types import Receive, Scope, Send

from gateway.config import GatewayConfig
from gateway.errors import ConfigError, ReloadRefused
from gateway.reload.changes import kept_providers, restart_only_changes
from gateway.reload.generation import Generation, Reload, close_adapters, load_failure
from gateway.services import Services
from gateway.telemetry.logs import add_log_secrets
from providers import Provider, build_providers

logger = logging.getLogger(__name__)


class Assemble(Protocol):
    def __call__(
        self,
        config: GatewayConfig,
        adapters: dict[str, Provider],
        previous: Generation | None,
        reload: Reload,
    ) -> Generation: ...


class ReloadableApp:
    def __init__(
        self, services: Services, assemble: Assemble, load: Callable[[], GatewayConfig] | None,
        on_load_failure: Callable[[str], None] | None = None,
    ) -> None:  # fmt: skip
        self._services = services
        self._assemble = assemble
        self._load = load
        self._on_load_failure = on_load_failure
        self._reload_on_sighup = False
        self._lock = asyncio.Lock()
        self._queued: asyncio.Future[dict[str, Any]] | None = None  # a reload not begun yet, that a call may join
        self._retiring: set[asyncio.Task[None]] = set()  # old generations waiting for their requests
        self._generation: Generation

    def begin(
        self,
        config: GatewayConfig,
        adapters: dict[str, Provider],
        reload_on_sighup: bool = False,
    ) -> None:
        """Assemble the first generation (raises ConfigError for what only the built providers can tell)."""
        self._generation = self._assemble(config, adapters, None, self.reload)
        self._services.serve(self._generation)
        self._reload_on_sighup = reload_on_sighup and self._load is not None

    @property
    def generation(self) -> Generation:
        """The generation serving new requests."""
        return self._generation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        generation = self._generation
        generation.request_started()
        try:
            await generation.app(scope, receive, send)
        finally:
            generation.request_finished()

    async def reload(self) -> dict[str, Any]:
        """Read the configuration again and serve it; what changed. ReloadRefused (nothing changed) if it cannot be."""
        if self._load is None:
            raise ReloadRefused(
                "This gateway was started without a config file (--config or SWITCHYARD_CONFIG): "
                "there is nothing to read again.", 409, "reload_unavailable",
            )  # fmt: skip
        # One reload waits behind a running one at most: it reads the file after every call that joins it.
        if self._queued is None:
            self._queued = asyncio.ensure_future(self._reload_from(self._load))
        # Shielded: a reload half done is not left so when the client that asked for it goes away.
        return await asyncio.shield(self._queued)

    async def _reload_from(self, load: Callable[[], GatewayConfig]) -> dict[str, Any]:
        async with self._lock:
            self._queued = None  # begun: a later call needs a later read
            try:
                config = await asyncio.to_thread(load)
            except ConfigError as error:
                raise ReloadRefused(str(error), 422, "invalid_config") from None
            return await self._swap_to(config)

    async def _swap_to(self, config: GatewayConfig) -> dict[str, Any]:
        old = self._generation
        restart_only = restart_only_changes(old.config.server, config.server)
        if restart_only:
            raise ReloadRefused(
                f"These fields change only at a restart: {', '.join(restart_only)}. Nothing was reloaded.",
                409, "restart_required",
            )  # fmt: skip
        if config == old.config:
            logger.info("configuration unchanged: generation %d serves on", old.number)
            return _report(old, old, unchanged=True)
        kept = kept_providers(old.config, config, old.adapters)
        try:
            built = build_providers({name: p for name, p in config.providers.items() if name not in kept})
        except ConfigError as error:
            raise ReloadRefused(str(error), 422, "invalid_config") from None
        adapters = {name: kept.get(name) or built[name] for name in config.providers}
        try:
            # Off the event loop: building the routes takes a tenth of a second, which requests should not wait for.
            new = await asyncio.to_thread(self._assemble, config, adapters, old, self.reload)
            await new.start(built.values())
            failure = await load_failure(built.values())
            if failure is not None:
                raise ReloadRefused(f"{failure}. Nothing was reloaded.", 422, "model_load_failed")
            await self._services.seed_budgets(new.keys, old.keys)  # before its first request: a new budget holds at once
        except ConfigError as error:
            await close_adapters(built.values())
            raise ReloadRefused(str(error), 422, "invalid_config") from None
        except BaseException:
            await close_adapters(built.values())
            raise
        new.number = old.number + 1
        add_log_secrets(config.secrets)
        self._generation = new  # from here, new requests go to the new generation (batch lines too)
        self._services.serve(new)
        stopped = [adapter for adapter in old.adapters.values() if all(adapter is not a for a in adapters.values())]
        retiring = asyncio.create_task(self._retire(old, stopped))
        self._retiring.add(retiring)
        retiring.add_done_callback(self._retiring.discard)
        report = _report(old, new)
        logger.info(
            "configuration reloaded (generation %d): models %s; providers kept %s, started %s, stopped %s",
            new.number, ", ".join(config.models) or "none", ", ".join(report["providers"]["kept"]) or "none",
            ", ".join(report["providers"]["started"]) or "none", ", ".join(report["providers"]["stopped"]) or "none",
        )  # fmt: skip
        return report

    async def _retire(self, old: Generation, stopped: list[Provider]) -> None:
        try:
            await old.drained()
        finally:  # at shutdown too, when the wait is cut short
            await old.retire()
            await close_adapters(stopped)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        try:
            await self._start()
        except Exception as error:
            logger.exception("the gateway could not start")
            await send({"type": "lifespan.startup.failed", "message": str(error)})
            return
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        try:
            await self._stop()
        except Exception as error:
            logger.exception("the gateway did not stop cleanly")
            await send({"type": "lifespan.shutdown.failed", "message": str(error)})
            return
        await send({"type": "lifespan.shutdown.complete"})

    async def _start(self) -> None:
        generation = self._generation
        await generation.start(generation.adapters.values())  # local models load on their own threads meanwhile
        if self._on_load_failure is not None:
            generation.report_load_failure(self._on_load_failure)
        await self._services.start()
        await self._services.seed_budgets(generation.keys)
        if self._reload_on_sighup:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._reload_on_signal)

    def _reload_on_signal(self) -> None:
        task = asyncio.ensure_future(self._logged_reload())
        self._retiring.add(task)  # kept referenced until done
        task.add_done_callback(self._retiring.discard)

    async def _logged_reload(self) -> None:
        logger.info("SIGHUP: reading the configuration again")
        try:
            await self.reload()
        except ReloadRefused as refusal:
            logger.error("SIGHUP: the configuration was not reloaded: %s", refusal.message)

    async def _stop(self) -> None:
        if self._reload_on_sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await self._services.close_batches()
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        generation = self._generation
        await generation.retire()
        await self._services.aclose()
        await close_adapters(generation.adapters.values())
        await self._services.close_tracing()


def _report(old: Generation, new: Generation, unchanged: bool = False) -> dict[str, Any]:
    """What a reload changed, as POST /admin/reload answers it."""
    kept = [name for name, adapter in new.adapters.items() if old.adapters.get(name) is adapter]
    return {
        "reloaded": not unchanged,
        "generation": new.number,
        "models": list(new.config.models),
        "providers": {
            "kept": kept,
            "started": [name for name in new.adapters if name not in kept],
            "stopped": [name for name, adapter in old.adapters.items() if new.adapters.get(name) is not adapter],
        },
    }
