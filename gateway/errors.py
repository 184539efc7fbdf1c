"""Errors the gateway raises itself, and how every error becomes a response.

They join the tree drawn in ``providers.errors``::

    OpenAIError
    ├── ProviderError ...          an upstream failed (providers.errors)
    └── GatewayError               the gateway refused the request itself
        ├── InvalidRequest         400, names the offending param
        ├── ModelNotFound          404 model_not_found
        ├── RouteNotFound          404, unknown URL
        └── MethodNotAllowed       405
"""

from __future__ import annotations

from starlette.responses import Response

from providers.errors import OpenAIError


class GatewayError(OpenAIError):
    pass


class InvalidRequest(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"


class ModelNotFound(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist or is not configured on this gateway.", param="model")


class RouteNotFound(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "unknown_url"

    def __init__(self, method: str, path: str) -> None:
        super().__init__(f"Invalid URL ({method} {path})")


class MethodNotAllowed(GatewayError):
    status_code = 405
    error_type = "invalid_request_error"
    code = "method_not_allowed"

    def __init__(self, method: str, path: str) -> None:
        super().__init__(f"Method {method} is not allowed for {path}")


def error_response(error: OpenAIError) -> Response:
    return Response(
        content=error.to_json(),
        status_code=error.status_code,
        headers=error.headers,
        media_type="application/json",
    )
