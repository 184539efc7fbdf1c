"""Errors that reach a client, in OpenAI's wire shape.

Every error the gateway can show a client is an :class:`OpenAIError`: it
carries the four fields of OpenAI's error body and the HTTP status, so one
handler renders them all. Whether a failure may be retried on the same
deployment, or may move on to another deployment, is a class attribute, never
a guess from the message text::

    OpenAIError                      (status, type, code, param, message)
    └── ProviderError                an upstream call failed
        ├── UpstreamRejected         upstream 4xx: the request itself is wrong
        │   ├── ContextWindowExceeded   400 context_length_exceeded           context-window fallbacks
        │   ├── ContentPolicyViolation  400 content_filter / content_policy_violation   content-policy fallbacks
        │   └── InvalidLocalRequest     400 a parameter the local engine cannot take as given
        ├── UpstreamAuthFailed       401/403: the provider key is wrong    fallback
        ├── UpstreamRateLimited      429                 retryable, fallback
        ├── UpstreamServerError      5xx                 retryable, fallback
        ├── UpstreamUnreachable      connect/DNS/reset   retryable, fallback -> 502
        ├── UpstreamTimeout          no answer in time   retryable, fallback -> 504
        ├── UpstreamProtocolError    answer we cannot read           fallback -> 502
        │   └── UpstreamRedirected   a 3xx: redirects are never followed  -> 502
        ├── StreamInterrupted        a stream broke after it started      -> 502
        ├── EndpointNotOffered       400 unsupported_endpoint: the provider has no such endpoint
        ├── UnsupportedParameter     400 unsupported_parameter: the model's unsupported_params is reject
        ├── ModelNotReady            503 the local model cannot answer now   fallback, never trips the breaker
        │   ├── ModelLoading         503 model_loading
        │   ├── ModelAsleep          503 model_sleeping: put to sleep (POST /sleep) until POST /wake_up
        │   └── ModelLoadFailed      503 model_load_failed
        └── EngineFailed             500 the local engine's step failed on this request   fallback
    ValueError                       the Python client (client.py), before any call
    ├── MissingAPIKey                the provider needs a key and none was given
    └── NotOffered                   the provider has no such endpoint

An upstream's ``Retry-After`` / ``retry-after-ms`` is read into
``ProviderError.retry_after`` (seconds, finite, never negative, or None);
the router decides what to wait and what to tell the client from it.

The gateway adds its own subclasses for requests it rejects itself
(see ``gateway.errors``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from providers.wire import Header

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


# Codes providers use for a refusal by their content filter (OpenAI, Azure OpenAI).
_CONTENT_POLICY_CODES = frozenset({"content_policy_violation", "content_filter"})


def error_type_for_status(status: int) -> str:
    """OpenAI's error ``type`` for an HTTP status, when the body names none."""
    if status >= 500:
        return "api_error"
    return _TYPE_BY_STATUS.get(status, "invalid_request_error")


class OpenAIError(Exception):
    """An error with OpenAI's body: ``{"error": {message, type, param, code}}``."""

    status_code: int = 500
    error_type: str = "api_error"
    code: str | None = None
    retryable: bool = False
    fallback_allowed: bool = False
    # Whether this failure counts against the deployment's circuit breaker: an
    # answer that says the deployment is unwell. A local model still loading
    # (or failed to load) says so without a call, and is reported as itself.
    trips_breaker: bool = True

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        if error_type is not None:
            self.error_type = error_type
        if code is not None:
            self.code = code
        self.param = param
        # Response headers worth keeping for the client, such as Retry-After.
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


class ProviderError(OpenAIError):
    """An upstream call failed; ``provider`` names the configured provider.

    ``retry_after``: the seconds the upstream asked for before another call
    (``parse_retry_after``), or None when it sent no usable value.
    """

    status_code = 502

    def __init__(
        self, message: str, *, provider: str | None = None, retry_after: float | None = None, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.provider = provider
        self.retry_after = retry_after


class UpstreamRejected(ProviderError):
    """The upstream refused the request as invalid; another deployment would too."""

    status_code = 400
    error_type = "invalid_request_error"


class ContextWindowExceeded(UpstreamRejected):
    """The prompt does not fit the model; a larger model may take it."""

    code = "context_length_exceeded"


class ContentPolicyViolation(UpstreamRejected):
    """The upstream's content filter refused the prompt; another model's policy may differ."""


class UpstreamAuthFailed(ProviderError):
    """The provider refused our key: the gateway's configuration is wrong."""

    status_code = 401
    error_type = "authentication_error"
    fallback_allowed = True


class UpstreamRateLimited(ProviderError):
    status_code = 429
    error_type = "rate_limit_error"
    retryable = True
    fallback_allowed = True


class UpstreamServerError(ProviderError):
    status_code = 502
    error_type = "api_error"
    retryable = True
    fallback_allowed = True


class UpstreamUnreachable(ProviderError):
    status_code = 502
    error_type = "api_error"
    retryable = True
    fallback_allowed = True


class UpstreamTimeout(ProviderError):
    status_code = 504
    error_type = "timeout_error"
    retryable = True
    fallback_allowed = True


class UpstreamProtocolError(ProviderError):
    """The upstream answered something that is not OpenAI's protocol."""

    status_code = 502
    error_type = "api_error"
    fallback_allowed = True


class UpstreamRedirected(UpstreamProtocolError):
    """The upstream answered a 3xx. Redirects are never followed: the key goes to ``base_url`` and nowhere else."""

    code = "upstream_redirect"


class EndpointNotOffered(ProviderError):
    """The provider has no such endpoint (embeddings at a chat-only provider): a configuration mistake."""

    status_code = 400
    error_type = "invalid_request_error"
    code = "unsupported_endpoint"

    def __init__(self, endpoint: str, provider: str) -> None:
        super().__init__(f"Provider '{provider}' does not offer /v1/{endpoint}.", provider=provider)


class StreamInterrupted(ProviderError):
    """An event stream broke after it started: the answer is incomplete."""

    status_code = 502
    error_type = "api_error"
    code = "stream_interrupted"


class UnsupportedParameter(ProviderError):
    """The request uses a parameter this provider does not take, and the model rejects such requests."""

    status_code = 400
    error_type = "invalid_request_error"
    code = "unsupported_parameter"

    def __init__(self, param: str, provider: str) -> None:
        super().__init__(
            f"Provider '{provider}' does not support the parameter `{param}` "
            "(this model's unsupported_params is 'reject'; 'drop' would remove it and say so in a header).",
            param=param,
            provider=provider,
        )


class InvalidLocalRequest(UpstreamRejected):
    """A parameter the local engine cannot take as given."""


class ModelNotReady(ProviderError):
    """The local model cannot answer now: another deployment may.

    Not a verdict on a call (no call was made), so it never trips the
    deployment's breaker: the client sees why, not "cooling down".
    """

    status_code = 503
    error_type = "api_error"
    fallback_allowed = True
    trips_breaker = False


class ModelLoading(ModelNotReady):
    code = "model_loading"


class ModelAsleep(ModelNotReady):
    """The engine was put to sleep (``POST /sleep``): its KV cache is freed until ``POST /wake_up``."""

    code = "model_sleeping"


class ModelLoadFailed(ModelNotReady):
    """Every load attempt failed; the message says why."""

    code = "model_load_failed"


class EngineFailed(ProviderError):
    """The engine's step failed while running this request (a bug, an out-of-memory); the engine serves on."""

    status_code = 500
    error_type = "api_error"
    fallback_allowed = True


class MissingAPIKey(ValueError):
    """The Python client: the provider needs a key and none was given; the message names the variable to set."""


class NotOffered(ValueError):
    """The Python client: the provider has no such endpoint (embeddings at Groq, moderations at most)."""


def error_from_response(
    status: int,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    *,
    provider: str | None = None,
) -> ProviderError:
    """Map an upstream's non-2xx answer to the error class that says what to do next.

    The upstream's own message, type, param and code are kept when its body has
    OpenAI's shape; other shapes (``{"error": "text"}``, ``{"detail": ...}``,
    ``{"message": ...}``, plain text) are normalised into it.
    """
    headers = headers or {}
    if 300 <= status < 400:
        return _redirect_error(status, headers.get("location"), provider)
    fields = _error_fields(body)
    message = fields.get("message") or f"upstream answered HTTP {status}"
    code = fields.get("code")
    kwargs: dict[str, Any] = {
        "status_code": status,
        "error_type": fields.get("type") or error_type_for_status(status),
        "param": fields.get("param"),
        "code": code,
        "provider": provider,
        "retry_after": parse_retry_after(headers),
    }
    if status == 429:
        return UpstreamRateLimited(message, **kwargs)
    if status in (401, 403):
        return UpstreamAuthFailed(message, **kwargs)
    if status >= 500:
        return UpstreamServerError(message, **kwargs)
    if code == "context_length_exceeded":
        return ContextWindowExceeded(message, **kwargs)
    if code in _CONTENT_POLICY_CODES:
        return ContentPolicyViolation(message, **kwargs)
    if status == 408:
        return UpstreamTimeout(message, **kwargs)
    if 400 <= status < 500:
        return UpstreamRejected(message, **kwargs)
    # A 1xx final answer: we asked for JSON and got neither data nor error.
    kwargs["status_code"] = 502
    return UpstreamProtocolError(f"upstream answered HTTP {status}", **kwargs)


def _redirect_error(status: int, location: str | None, provider: str | None) -> UpstreamRedirected:
    """Name where the redirect pointed, without its query or credentials (they may carry tokens)."""
    where = ""
    if location:
        parts = urlsplit(location)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port is not None and host else host
        target = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        where = f" to {target}" if target else ""
    who = f"provider '{provider}'" if provider else "the upstream"
    return UpstreamRedirected(
        f"{who} answered HTTP {status}, a redirect{where}; upstream redirects are not followed "
        "(a provider key goes to its base_url only): set base_url to the address the API answers on.",
        provider=provider,
    )


def _error_fields(body: bytes) -> dict[str, Any]:
    """Pull OpenAI's error fields out of whatever shape the upstream used."""
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return {"message": text[:1000]} if text else {}
    if isinstance(parsed, list) and parsed and isinstance(parsed[0], dict):
        parsed = parsed[0]  # some servers wrap the error object in a list
    if not isinstance(parsed, dict):
        return {"message": str(parsed)[:1000]} if parsed is not None else {}
    inner = parsed.get("error", parsed)
    if isinstance(inner, str):
        return {"message": inner}
    if not isinstance(inner, dict):
        return {"message": str(inner)[:1000]}
    message = inner.get("message") or inner.get("detail") or inner.get("msg")
    if message is not None and not isinstance(message, str):
        message = orjson.dumps(message).decode()
    code = inner.get("code")
    param = inner.get("param")
    error_type = inner.get("type")
    return {
        "message": message,
        "type": error_type if isinstance(error_type, str) else None,
        "param": param if isinstance(param, str) else None,
        # Some servers put the HTTP status in ``code``; OpenAI's code is a string.
        "code": code if isinstance(code, str) else None,
    }


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the upstream asked us to wait, from ``retry-after-ms`` or else ``retry-after``.

    Always finite and never negative, or None: a value that is not a
    number of seconds (RFC 9110 delay-seconds, or a fraction as OpenAI
    sends) or an HTTP date is no hint at all. ``inf``, ``nan``, ``1e400``
    (which overflows to inf), negative numbers and garbage are ignored, so
    the caller falls back to its own backoff; a date in the past is 0.
    Huge finite values are kept: the router caps what it waits and what it
    tells the client (``router.retries.retry_after_max``).
    """
    millis = _seconds(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    value = headers.get(Header.RETRY_AFTER)
    if not value:
        return None
    seconds = _seconds(value)
    return seconds if seconds is not None else _seconds_until_http_date(value)


def _seconds(value: str | None) -> float | None:
    """``value`` as a finite, non-negative number, else None."""
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _seconds_until_http_date(value: str) -> float | None:
    try:
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:  # "-0000": UTC, with the zone unknown
            when = when.replace(tzinfo=timezone.utc)
        return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
