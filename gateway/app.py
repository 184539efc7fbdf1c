"""Assemble the ASGI application from a validated config."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException
from starlette.responses import Response

from providers import OpenAIError, Provider, build_providers

from .api import api_routes
from .config import GatewayConfig
from .disconnect import CancelOnDisconnectMiddleware
from .errors import InvalidRequest, MethodNotAllowed, error_response, not_found_error
from .health import health_routes
from .request_id import RequestIdMiddleware
from .router import Router
from .validation import REQUEST_MODELS

logger = logging.getLogger(__name__)

VERSION = "0.1.0"


def create_app(config: GatewayConfig, *, providers: Mapping[str, Provider] | None = None) -> FastAPI:
    """The gateway for ``config``; ``providers`` replaces the adapters built from it (tests)."""
    adapters = dict(providers) if providers is not None else build_providers(config.providers)
    router = Router(config.models, adapters)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        for adapter in adapters.values():
            await adapter.aclose()

    app = FastAPI(title="Switchyard", version=VERSION, lifespan=lifespan, redoc_url=None)
    app.state.router = router
    app.include_router(api_routes(router))
    app.include_router(health_routes(router))
    _install_error_handlers(app)
    # The middleware added last runs first: every response, even an error, gets its request id.
    app.add_middleware(CancelOnDisconnectMiddleware)
    app.add_middleware(RequestIdMiddleware)
    app.openapi = lambda: _openapi_schema(app)  # type: ignore[method-assign]
    return app


def _install_error_handlers(app: FastAPI) -> None:
    async def openai_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, OpenAIError)
        return error_response(error)

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        if error.status_code == 404:
            return error_response(not_found_error(request.method, request.url.path))
        if error.status_code == 405:
            return error_response(MethodNotAllowed(request.method, request.url.path))
        return error_response(OpenAIError(str(error.detail), status_code=error.status_code))

    async def validation_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        first = error.errors()[0]
        param = ".".join(str(part) for part in first["loc"][1:]) or None
        return error_response(InvalidRequest(f"Invalid value for '{param}': {first['msg']}.", param=param))

    async def unexpected_error(request: Request, error: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(OpenAIError("The server had an error while processing your request."))

    app.add_exception_handler(OpenAIError, openai_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected_error)


def _openapi_schema(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in REQUEST_MODELS.values():
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(model_schema.pop("$defs", {}))
            components[model.__name__] = model_schema
        app.openapi_schema = schema
    return app.openapi_schema
