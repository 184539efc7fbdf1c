"""Errors the gateway raises itself, and how every error becomes a response.

They join the tree drawn in ``providers.errors``::

    OpenAIError
    ├── ProviderError ...          an upstream failed (providers.errors)
    └── GatewayError               the gateway refused the request itself
        ├── InternalError          500, a bug; details only in the log
        ├── InvalidRequest         400, names the offending param
        ├── ModelNotFound          404 model_not_found
        ├── RouteNotFound          404, unknown URL
        ├── EndpointNotSupported   404, an OpenAI URL not served yet
        ├── MethodNotAllowed       405, with Allow
        ├── RequestTimeout         408, headers or body too slow (gateway.http.server)
        ├── RequestTooLarge        413, past server.max_body_bytes
        ├── TargetTooLong          414, a URL past server.max_header_bytes
        ├── UnsupportedMediaType   415, a model endpoint's body is not application/json
        ├── MisdirectedRequest     421, a Host this gateway does not answer to (DNS rebinding)
        ├── HeadersTooLarge        431, past server.max_header_count or max_header_bytes
        ├── NoDeploymentAvailable  503, every deployment is cooling down
        ├── TooManyConnections     503, past server.max_connections
        ├── DeadlineExceeded       504, the request's deadline passed
        └── (gateway.keys.keyring)         InvalidApiKey 401, ModelNotAllowed 403, AdminKeyRequired 403,
                                   RateLimitReached 429, BudgetExhausted 429
"""

from __future__ import annotations

import math

from starlette.responses import Response

from providers.errors import OpenAIError


class GatewayError(OpenAIError):
    pass


class InternalError(GatewayError):
    """A bug in the gateway: logged with its traceback, shown to the client without it."""

    status_code = 500
    error_type = "api_error"

    def __init__(self) -> None:
        super().__init__("The server had an error while processing your request.")


class InvalidRequest(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"


class RequestTooLarge(GatewayError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "request_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"The request body is larger than this gateway takes ({limit} bytes; server.max_body_bytes).")


class TargetTooLong(GatewayError):
    status_code = 414
    error_type = "invalid_request_error"
    code = "uri_too_long"

    def __init__(self, limit: int) -> None:
        super().__init__(f"The URL is longer than this gateway takes ({limit} bytes; server.max_header_bytes).")


class HeadersTooLarge(GatewayError):
    status_code = 431
    error_type = "invalid_request_error"
    code = "request_header_fields_too_large"

    def __init__(self, what: str) -> None:
        super().__init__(f"The request has {what} than this gateway takes.")


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


class EndpointNotSupported(GatewayError):
    """An OpenAI endpoint this gateway does not serve (yet): say so, not just "no such URL"."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "unsupported_endpoint"

    def __init__(self, method: str, path: str) -> None:
        super().__init__(
            f"{method} {path} is an OpenAI endpoint that Switchyard does not serve yet; "
            "see docs/compatibility.md for what it serves."
        )


class MethodNotAllowed(GatewayError):
    status_code = 405
    error_type = "invalid_request_error"
    code = "method_not_allowed"

    def __init__(self, method: str, path: str, allowed: str) -> None:
        # RFC 9110 requires Allow on a 405: ``allowed`` is its value ("POST", "GET, HEAD").
        super().__init__(f"Method {method} is not allowed for {path}", headers={"allow": allowed})


class RequestTimeout(GatewayError):
    """The client sent its request's headers, or its body, too slowly; the connection is closed after this."""

    status_code = 408
    error_type = "invalid_request_error"
    code = "request_timeout"

    def __init__(self, what: str) -> None:
        super().__init__(f"The request's {what} did not arrive in time.", headers={"connection": "close"})


class UnsupportedMediaType(GatewayError):
    """A model endpoint's body is not declared JSON: what a cross-site form or "simple" request sends."""

    status_code = 415
    error_type = "invalid_request_error"
    code = "unsupported_media_type"

    def __init__(self, path: str) -> None:
        super().__init__(
            f"POST {path} takes a JSON body: send `Content-Type: application/json`.",
            headers={"accept": "application/json"},
        )


class MisdirectedRequest(GatewayError):
    """The Host header names a host this gateway does not answer to, as a DNS-rebinding page's requests do.

    421 (RFC 9110, 15.5.20): the server is not authoritative for that host.
    """

    status_code = 421
    error_type = "invalid_request_error"
    code = "host_not_allowed"

    def __init__(self, host: str | None) -> None:
        named = f"`{host}` " if host else ""
        super().__init__(
            f"This gateway does not answer to the host {named}in the request's Host header; "
            "it answers to 127.0.0.1, localhost, [::1] and the names in server.allowed_hosts."
        )


class NoDeploymentAvailable(GatewayError):
    """Every deployment that could serve the request is cooling down after failures.

    ``retry_after``: seconds until the first of them takes a probe request.
    The header says it rounded up and at least 1, so a client that honours it
    (the openai SDKs do, up to 120 s) comes back when a probe may go, not
    before; docs/resilience.md has how that meets the SDKs' own retries.
    """

    status_code = 503
    error_type = "api_error"
    code = "no_deployment_available"
    fallback_allowed = True  # another model's deployments may be up

    def __init__(self, model: str, retry_after: float) -> None:
        super().__init__(
            f"Every deployment of `{model}` is cooling down after repeated failures.",
            headers={"retry-after": str(max(1, math.ceil(retry_after)))},
        )


class TooManyConnections(GatewayError):
    """The gateway has ``server.max_connections`` open; this connection is answered, then closed."""

    status_code = 503
    error_type = "api_error"
    code = "too_many_connections"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The gateway has its maximum of {limit} connections open (server.max_connections); try again shortly.",
            headers={"retry-after": "1", "connection": "close"},
        )


class DeadlineExceeded(GatewayError):
    status_code = 504
    error_type = "timeout_error"
    code = "deadline_exceeded"

    def __init__(self, seconds: float) -> None:
        super().__init__(f"The request did not complete within its {seconds:g} s deadline.")


# OpenAI's endpoints that the gateway does not serve; docs/compatibility.md lists them too.
UNSUPPORTED_OPENAI_PATHS = (
    "/v1/responses",
    "/v1/audio/",
    "/v1/images/",
    "/v1/files",
    "/v1/uploads",
    "/v1/batches",
    "/v1/fine_tuning/",
    "/v1/assistants",
    "/v1/threads",
    "/v1/vector_stores",
    "/v1/realtime",
    "/v1/evals",
    "/v1/containers",
    "/v1/conversations",
    "/v1/videos",
    "/v1/chat/completions/",  # stored completions
)


def not_found_error(method: str, path: str) -> GatewayError:
    if path.startswith(UNSUPPORTED_OPENAI_PATHS):
        return EndpointNotSupported(method, path)
    return RouteNotFound(method, path)


def error_response(error: OpenAIError) -> Response:
    return Response(
        content=error.to_json(),
        status_code=error.status_code,
        headers=error.headers,
        media_type="application/json",
    )
