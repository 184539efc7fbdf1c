"""Assemble the ASGI application from a validated config.

The process's services (gateway/services.py: stores, limits' state, metrics)
are made once; each configuration is assembled into a generation over them
(``assemble``), which ``ReloadableApp`` serves and swaps on a reload
(gateway/reload/). A generation's layers::

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
            └── MediaRelay              POST audio/transcriptions, translations, speech, images/generations,
                │                       edits (http/media/): multipart spooled, routed and counted the same way
                └── AnsweredErrorsMiddleware  an error FastAPI answered ends there (the connection serves on)
                    └── FastAPI         models, usage, kept responses, health, engines, /admin/reload,
                                        /docs, errors for unknown URLs
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import partial
from importlib import metadata

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp

from gateway.cache import Embedder, ResponseCache
from gateway.config import GatewayConfig
from gateway.errors import (
    ConfigError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    not_found_error,
)
from gateway.http.doors import error_body_for
from gateway.http.media import MediaRelay
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
from gateway.keys.keyring import ApiKeyMiddleware, KeyRing
from gateway.pricing import PriceBook
from gateway.reload import Generation, Reload, ReloadableApp
from gateway.routes.admin import admin_routes
from gateway.routes.batches import batch_routes
from gateway.routes.engines import engine_routes
from gateway.routes.files import file_routes
from gateway.routes.health import health_routes
from gateway.routes.message_batches import message_batch_routes
from gateway.routes.models import model_routes
from gateway.routes.responses import response_routes
from gateway.routes.status import status_routes
from gateway.routes.tokenize import tokenize_routes
from gateway.routes.usage import usage_routes
from gateway.routing.router import Router
from gateway.services import Services
from providers import OpenAIError, Provider, build_providers
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
    reload_from: Callable[[], GatewayConfig] | None = None,
    reload_on_sighup: bool = False,
) -> ReloadableApp:
    """The gateway for ``config``; ``providers`` replaces the adapters built from it.

    ``on_load_failure(reason)`` is called once if a local model fails to load
    for good (``switchyard serve`` for one model then exits, as ``vllm serve`` does).
    ``reload_from()`` reads the configuration again, for ``POST /admin/reload``
    (and SIGHUP with ``reload_on_sighup``); without it a reload is refused.
    """
    services = Services(config, VERSION)
    adapters = dict(providers) if providers is not None else build_providers(config.providers)
    gateway = ReloadableApp(services, partial(assemble, services=services), reload_from, on_load_failure)
    gateway.begin(config, adapters, reload_on_sighup)
    return gateway


def assemble(
    config: GatewayConfig, adapters: dict[str, Provider], previous: Generation | None, reload: Reload,
    *, services: Services,
) -> Generation:  # fmt: skip
    """One configuration's gateway over ``services``: its router, keys, routes and middleware.

    ``previous``: the generation a reload replaces (its router's deployment state is kept where it can be).
    Raises ConfigError for what only the built providers can tell.
    """
    server = config.server
    router = Router(config, adapters, previous=previous.router if previous is not None else None)
    router.tracing = services.tracing
    keys = KeyRing(server)
    cache = _response_cache(config, adapters, services)
    metrics, ledger = services.metrics, services.ledger
    api = FastAPI(title="Switchyard", version=VERSION, redoc_url=None)
    api.include_router(model_routes(router.table))
    api.include_router(usage_routes(ledger, keys.has_admin_keys))
    api.include_router(response_routes(services.responses))
    body_limits = BodyLimits.of(server)
    api.include_router(tokenize_routes(router.table, body_limits))
    api.include_router(health_routes(router.table, metrics, VERSION))
    api.include_router(engine_routes(router.table, keys))
    api.include_router(status_routes(router.table, ledger, keys, server.status_page))
    api.include_router(admin_routes(keys, reload))
    batches = services.batches
    api.include_router(file_routes(batches.store, batches.bodies, batches.max_file_bytes))
    api.include_router(batch_routes(batches.store, batches.bodies, batches.runner))
    api.include_router(message_batch_routes(batches.store, batches.bodies, batches.runner))
    _install_error_handlers(api)
    api.openapi = lambda: openapi_schema(api)  # type: ignore[method-assign]
    accounting = Accounting(
        metrics, services.limits, ledger, PriceBook(config), services.budgets, router.table, server.reserve_max_tokens,
        services.webhooks,
    )  # fmt: skip
    shadowed = {name: model.shadow for name, model in config.models.items() if model.shadow}
    shadows = ShadowTraffic(shadowed, router, accounting, _embedder(adapters)) if shadowed else None
    # The media URLs (audio, images) before FastAPI: routed and counted as the relay's are (docs/media.md).
    media = MediaRelay(
        router, accounting, body_limits, server.data_dir / "uploads", AnsweredErrorsMiddleware(api), services.tracing
    )
    relay = GatewayApp(
        router, media, accounting, body_limits, services.responses, cache, shadows,
        services.tracing,
    )  # fmt: skip
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
    app = RedactSecretsMiddleware(app, mask) if mask else app
    return Generation(config, adapters, router, keys, app, relay, accounting, cache, shadows)


def _response_cache(config: GatewayConfig, adapters: Mapping[str, Provider], services: Services) -> ResponseCache | None:
    """The models' response caches, over the process's cache store (None: no model has one).

    Raises ConfigError when a semantic cache has no local embedding model to embed with.
    """
    configs = {name: model.cache for name, model in config.models.items() if model.cache is not None}
    if not configs:
        return None
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
    return ResponseCache(configs, services.cache_store(), embedders)


def _embedder(adapters: Mapping[str, Provider], name: str | None = None) -> Embedder | None:
    """The embedding model of provider ``name``, or of the first local embedding provider; None if there is none."""
    candidates = [name] if name is not None else list(adapters)
    return next((found for n in candidates if (found := getattr(adapters.get(n), "embedder", None)) is not None), None)


def _install_error_handlers(app: FastAPI) -> None:
    def shaped(request: Request, error: OpenAIError) -> Response:
        return error_response(error, error_body_for(request.url.path))  # Anthropic's under /v1/messages/

    async def openai_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, OpenAIError)
        return shaped(request, error)

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        if error.status_code == 404:
            return shaped(request, not_found_error(request.method, request.url.path))
        if error.status_code == 405:
            return shaped(request, MethodNotAllowed(request.method, request.url.path, _allowed(app, request.url.path)))
        return shaped(request, OpenAIError(str(error.detail), status_code=error.status_code))

    async def validation_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        first = error.errors()[0]
        param = ".".join(str(part) for part in first["loc"][1:]) or None
        return shaped(request, InvalidRequest(f"Invalid value for '{param}': {first['msg']}.", param=param))

    async def unexpected_error(request: Request, error: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return shaped(request, InternalError())

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


def _json_body_paths(api: FastAPI) -> frozenset[str]:
    """The paths whose POST the API description says takes a JSON body: the relay's and FastAPI's alike.

    Matched exactly against the request's path: no such path has a parameter.
    Worked out once: the POST routes do not depend on the configuration (only
    GET /status comes and goes with it), and describing the API takes a
    quarter second that a reload should not spend again.
    """
    global _JSON_BODY_PATHS
    if _JSON_BODY_PATHS is None:
        _JSON_BODY_PATHS = frozenset(_described_json_body_paths(api))
    return _JSON_BODY_PATHS


_JSON_BODY_PATHS: frozenset[str] | None = None


def _described_json_body_paths(api: FastAPI) -> set[str]:
    paths = api.openapi()["paths"]
    return {path for path, operations in paths.items()
            if "application/json" in operations.get("post", {}).get("requestBody", {}).get("content", {})}  # fmt: skip
