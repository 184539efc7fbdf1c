"""Assemble the ASGI application from a validated config.

::

    RedactSecretsMiddleware             configured keys masked in every byte sent (only when some are configured)
    └── RequestIdMiddleware             x-request-id on every response
    └── HeaderLimitsMiddleware          too many header fields, or too many bytes of them -> 431 (a URL: 414)
    └── CORSMiddleware                  browsers' preflights (only with server.cors_origins)
    └── BrowserGuardMiddleware          Host check (DNS rebinding) -> 421; POST bodies must be JSON -> 415
    └── ApiKeyMiddleware                /v1/ needs a known key (only when keys are configured)
    └── CancelOnDisconnectMiddleware    client gone -> request cancelled
        └── GatewayApp                  POST chat/completions, completions, embeddings, moderations,
            │                           responses, messages (OpenAI's and Anthropic's newer APIs,
            │                           translated; http/doors/) -> relay
            │                           (Accounting: key limits before, metrics/ledger/charge after)
            └── AnsweredErrorsMiddleware  an error FastAPI answered ends there (the connection serves on)
                └── FastAPI             models, usage, kept responses, health, /docs, errors for unknown URLs
"""

from __future__ import annotations

import asyncio
import logging
import os
from importlib import metadata
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from zoneinfo import ZoneInfo

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp

from gateway.cache import Embedder, ResponseCache
from gateway.config import GatewayConfig, ServerConfig
from gateway.conversations import open_response_store
from gateway.errors import (
    ConfigError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    not_found_error,
)
from gateway.http.middleware.answered_errors import AnsweredErrorsMiddleware
from gateway.http.middleware.browser_guard import BrowserGuardMiddleware, host_check_for
from gateway.http.middleware.disconnect import CancelOnDisconnectMiddleware
from gateway.http.middleware.header_limits import HeaderLimitsMiddleware
from gateway.http.middleware.redaction import RedactSecretsMiddleware
from gateway.http.middleware.request_id import RequestIdMiddleware
from gateway.http.openapi import openapi_schema
from gateway.http.relay import GatewayApp
from gateway.http.responses import error_response
from gateway.http.shadow import ShadowTraffic
from gateway.http.validation import BodyLimits
from gateway.keys.accounting import Accounting
from gateway.keys.budgets import BudgetBook, LocalBudgetBook, spent_this_period
from gateway.keys.keyring import ApiKeyMiddleware, KeyRing
from gateway.keys.limits import KeyLimits, LocalKeyLimits
from gateway.ledger import LedgerWriter, open_store
from gateway.pricing import PriceBook
from gateway.routes.engines import engine_routes
from gateway.routes.health import health_routes
from gateway.routes.models import model_routes
from gateway.routes.responses import response_routes
from gateway.routes.status import status_routes
from gateway.routes.tokenize import tokenize_routes
from gateway.routes.usage import usage_routes
from gateway.routing.router import Router
from gateway.routing.table import ModelTable
from gateway.telemetry.metrics import GatewayMetrics
from gateway.telemetry.tracing import Tracing, tracing_config
from gateway.webhooks import WebhookSender, WebhookTarget, secret_key
from providers import LoadsModel, OpenAIError, Provider, build_providers
from providers.config import HostedProviderConfig
from providers.redact import MIN_MASKED_LENGTH, SecretMask
from providers.wire import EXPOSED_HEADERS

logger = logging.getLogger(__name__)

def _installed_version() -> str:
    try:
        return metadata.version("switchyard")
    except metadata.PackageNotFoundError:  # a source tree on sys.path, never installed
        return "0+unknown"


# The installed distribution's, so /version, the API description and traces say what is running.
VERSION = _installed_version()


def create_app(
    config: GatewayConfig,
    *,
    providers: Mapping[str, Provider] | None = None,
    on_load_failure: Callable[[str], None] | None = None,
) -> ASGIApp:
    """The gateway for ``config``; ``providers`` replaces the adapters built from it.

    ``on_load_failure(reason)`` is called once if a local model fails to load
    for good (``switchyard serve`` for one model then exits, as ``vllm serve`` does).
    """
    server = config.server
    adapters = dict(providers) if providers is not None else build_providers(config.providers)
    router = Router(config, adapters)
    keys = KeyRing(server)
    limits = _key_limits(server)
    ledger = LedgerWriter(lambda: open_store(server), server.ledger_flush_interval) if server.usage_ledger else None
    responses = open_response_store(server) if server.store_responses else None  # opened at first use
    budgets = _budget_book(server)
    cache = _response_cache(config, adapters)
    tracing = router.tracing = _tracing(config)
    webhooks = _webhooks(server)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for adapter in adapters.values():
            await adapter.start()  # local models load on their own threads meanwhile
        watch = asyncio.create_task(_report_load_failure(router.table, on_load_failure)) if on_load_failure else None
        if webhooks is not None:
            await webhooks.start()
        if ledger is not None:
            await ledger.start()
            if any(key.budget_tokens is not None for key in keys.limited):
                await limits.seed_spent(await ledger.spent_by_key())
            if keys.dollar_budgets:
                await budgets.seed(await spent_this_period(ledger, keys.dollar_budgets, budgets))
        try:
            yield
        finally:
            if watch is not None:
                watch.cancel()
            if shadows is not None:  # before the ledger closes: a copy cut short is still recorded
                await shadows.aclose()
            if ledger is not None:
                await ledger.aclose()
            if webhooks is not None:  # after every request's events are queued
                await webhooks.aclose()
            if responses is not None:
                await responses.aclose()
            if cache is not None:
                await cache.aclose()
            await limits.aclose()
            await budgets.aclose()
            for adapter in adapters.values():
                await adapter.aclose()
            if tracing is not None:  # last: the spans of requests cut short at shutdown go out too
                await tracing.aclose()

    metrics = GatewayMetrics(router.table, ledger)
    if webhooks is not None:
        metrics.watch_webhooks(webhooks)
    api = FastAPI(title="Switchyard", version=VERSION, lifespan=lifespan, redoc_url=None)
    api.include_router(model_routes(router.table))
    api.include_router(usage_routes(ledger, keys.has_admin_keys))
    api.include_router(response_routes(responses))
    body_limits = BodyLimits.of(server)
    api.include_router(tokenize_routes(router.table, body_limits))
    api.include_router(health_routes(router.table, metrics, VERSION))
    api.include_router(engine_routes(router.table, keys))
    api.include_router(status_routes(router.table, ledger, keys, server.status_page))
    _install_error_handlers(api)
    api.openapi = lambda: openapi_schema(api)  # type: ignore[method-assign]
    accounting = Accounting(
        metrics, limits, ledger, PriceBook(config), budgets, router.table, server.reserve_max_tokens, webhooks
    )
    shadowed = {name: model.shadow for name, model in config.models.items() if model.shadow}
    shadows = ShadowTraffic(shadowed, router, accounting, _embedder(adapters)) if shadowed else None
    relay = GatewayApp(
        router, AnsweredErrorsMiddleware(api), accounting, body_limits, responses, cache, shadows, tracing
    )
    app: ASGIApp = CancelOnDisconnectMiddleware(relay)
    if not keys.is_empty:
        app = ApiKeyMiddleware(app, keys)
    # Inside CORS, so that the origins it allows can read these refusals.
    app = BrowserGuardMiddleware(app, host_check_for(server.host, server.allowed_hosts), _json_body_paths(api))
    if server.cors_origins:
        # Outside the key check: a browser's preflight carries no key.
        app = CORSMiddleware(
            app, allow_origins=server.cors_origins, allow_methods=["*"], allow_headers=["*"],
            expose_headers=list(EXPOSED_HEADERS),
        )  # fmt: skip
    app = HeaderLimitsMiddleware(app, server.max_header_count, server.max_header_bytes)
    app = RequestIdMiddleware(app)
    mask = SecretMask(config.secrets)
    if mask.too_short:
        logger.warning(
            "%d configured key(s) are shorter than %d characters: masked in log lines, not in answers "
            "(that would mask the same word in every answer); use longer keys",
            mask.too_short, MIN_MASKED_LENGTH,
        )  # fmt: skip
    # Outermost, so it sees every byte any layer writes (docs/security.md).
    return RedactSecretsMiddleware(app, mask) if mask else app


async def _report_load_failure(table: ModelTable, report: Callable[[str], None]) -> None:
    """``report`` the first local model that fails to load for good, if any does."""

    async def settled(provider: LoadsModel) -> LoadsModel:
        await provider.wait_loaded()
        return provider

    for finished in asyncio.as_completed([settled(provider) for provider in table.models_loading_here()]):
        provider = await finished
        if provider.state == "failed":
            report(provider.error or f"the model of provider '{provider.name}' could not be loaded")
            return


def _tracing(config: GatewayConfig) -> Tracing | None:
    """Traces over OTLP, when ``server.otel`` or the OTEL_EXPORTER_OTLP_* variables ask for them."""
    otel = tracing_config(config.server, os.environ)
    if otel is None:
        return None
    kinds = {name: provider.type for name, provider in config.providers.items()}
    urls = {
        name: provider.base_url or provider.preset.base_url or ""
        for name, provider in config.providers.items() if isinstance(provider, HostedProviderConfig)
    }  # fmt: skip
    try:
        return Tracing(otel, kinds, urls, config.secrets, VERSION)
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


def _response_cache(config: GatewayConfig, adapters: Mapping[str, Provider]) -> ResponseCache | None:
    """The models' response caches, in this process or Redis (None: no model has one).

    Raises ConfigError when a semantic cache has no local embedding model to embed with.
    """
    configs = {name: model.cache for name, model in config.models.items() if model.cache is not None}
    if not configs:
        return None
    from gateway.cache.store import MemoryStore

    embedders: dict[str, Embedder] = {}
    for name, cache in configs.items():
        if cache.mode != "semantic":
            continue
        embedder = _embedder(adapters, cache.embedder)
        if embedder is None:
            wanted = f"provider {cache.embedder!r}" if cache.embedder else "a `type: local` provider"
            raise ConfigError("providers.yaml", [
                f"models.{name}.cache: semantic mode needs {wanted} with an embedding model "
                "(such as `{type: local, model: all-minilm-l6-v2}`)"
            ])  # fmt: skip
        embedders[name] = embedder
    if config.server.redis_url is None:
        return ResponseCache(configs, MemoryStore(), embedders)
    from gateway.cache.redis_store import RedisStore  # redis is an optional dependency

    return ResponseCache(configs, RedisStore(config.server.redis_url.get_secret_value()), embedders)


def _embedder(adapters: Mapping[str, Provider], name: str | None = None) -> Embedder | None:
    """The embedding model of provider ``name``, or of the first local embedding provider; None if there is none."""
    candidates = [name] if name is not None else list(adapters)
    return next((found for n in candidates if (found := getattr(adapters.get(n), "embedder", None)) is not None), None)


def _budget_book(server: ServerConfig) -> BudgetBook:
    timezone = ZoneInfo(server.budget_timezone)
    if server.redis_url is None:
        return LocalBudgetBook(timezone)
    from gateway.keys.redis_budgets import (
        RedisBudgetBook,  # redis is an optional dependency
    )

    return RedisBudgetBook(server.redis_url.get_secret_value(), timezone)


def _install_error_handlers(app: FastAPI) -> None:
    async def openai_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, OpenAIError)
        return error_response(error)

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        if error.status_code == 404:
            return error_response(not_found_error(request.method, request.url.path))
        if error.status_code == 405:
            return error_response(MethodNotAllowed(request.method, request.url.path, _allowed(app, request.url.path)))
        return error_response(OpenAIError(str(error.detail), status_code=error.status_code))

    async def validation_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        first = error.errors()[0]
        param = ".".join(str(part) for part in first["loc"][1:]) or None
        return error_response(InvalidRequest(f"Invalid value for '{param}': {first['msg']}.", param=param))

    async def unexpected_error(request: Request, error: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(InternalError())

    app.add_exception_handler(OpenAIError, openai_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected_error)


def _allowed(app: FastAPI, path: str) -> str:
    """Every method some route answers at ``path``, for Allow (Starlette's 405 names only the first route's)."""
    methods = [
        method for method in _METHODS
        if any(route.matches({"type": "http", "path": path, "method": method, "root_path": ""})[0] is Match.FULL
               for route in app.router.routes)
    ]  # fmt: skip
    return ", ".join(methods)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _json_body_paths(api: FastAPI) -> set[str]:
    """The paths whose POST the API description says takes a JSON body: the relay's and FastAPI's alike.

    Matched exactly against the request's path: no such path has a parameter.
    """
    paths = api.openapi()["paths"]
    return {path for path, operations in paths.items()
            if "application/json" in operations.get("post", {}).get("requestBody", {}).get("content", {})}  # fmt: skip
