"""Errors the gateway raises itself (the request never reached an upstream), and the config's.

Every one is an OpenAI-shaped error that the HTTP layer writes as it is
(gateway.http.responses); an upstream's failures are the ProviderErrors of
``providers.errors``::

    OpenAIError                    (providers.errors)
    └── GatewayError               the gateway refused the request itself
        ├── InternalError          500, a bug; details only in the log
        ├── InvalidRequest         400, names the offending param
        │   ├── ChatNotTokenizable 400, /tokenize with `messages` for a hosted model
        │   ├── UnknownTokenId     400, /detokenize with an id the model does not have
        │   ├── Untranslatable     400, a field chat has no place for (unsupported_params: reject)
        │   ├── PreviousResponseNotFound  400, a previous_response_id nobody kept (or another key's)
        │   └── InvalidBatchInput  400, a batch's input file: names the line and what is wrong with it
        ├── InvalidApiKey          401, no key or an unknown one
        ├── InvalidToken           401, a JWT that does not verify: says why, never echoes it
        ├── ModelNotAllowed        403, the key may not use this model
        ├── AdminKeyRequired       403, /v1/usage without an admin key
        ├── ModelNotFound          404 model_not_found
        ├── ResponseNotFound       404, GET or DELETE /v1/responses/{id} of no kept response
        ├── FileNotFound           404, /v1/files/{id} of no such file (or another key's)
        ├── BatchNotFound          404, /v1/batches/{id} of no such batch (or another key's)
        ├── RouteNotFound          404, unknown URL
        ├── EndpointNotSupported   404, an OpenAI URL not served yet
        ├── LedgerDisabled         404, /v1/usage with server.usage_ledger off
        ├── MethodNotAllowed       405, with Allow
        ├── RequestTimeout         408, headers or body too slow (gateway.http.server)
        ├── BatchNotCancellable    409, cancel of a batch that has ended
        ├── BatchStillRunning      409, a Message Batch's results or deletion before it ended
        ├── ReloadRefused          409 or 422, /admin/reload not done: the configuration before still serves
        ├── RequestTooLarge        413, past server.max_body_bytes
        ├── FileTooLarge           413, an upload past server.max_file_bytes
        ├── TargetTooLong          414, a URL past server.max_header_bytes
        ├── UnsupportedMediaType   415, a model endpoint's body is not application/json
        ├── MisdirectedRequest     421, a Host this gateway does not answer to (DNS rebinding)
        ├── RateLimitReached       429, the key's rpm or tpm, with Retry-After
        ├── BudgetExhausted        429 insufficient_quota, the key's budget_tokens spent
        ├── DollarBudgetSpent      429 insufficient_quota, a budget in dollars would pass its limit
        ├── ModelNotPriced         403, a key with a dollar budget calling a model with no known price
        ├── HeadersTooLarge        431, past server.max_header_count or max_header_bytes
        ├── NoDeploymentAvailable  503, every deployment is cooling down
        ├── TooManyConnections     503, past server.max_connections
        └── DeadlineExceeded       504, the request's deadline passed

    Exception
    └── ConfigError                providers.yaml cannot be used (switchyard exits with its problems)
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import TYPE_CHECKING

from gateway.keys.limits import format_duration
from providers.errors import OpenAIError
from providers.wire import Header

if TYPE_CHECKING:
    from gateway.keys.limits import Admission, KeyLimitsConfig


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


class ChatNotTokenizable(InvalidRequest):
    code = "unsupported_parameter"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"`messages` can be tokenized for local models only; `{model}` is hosted: send `prompt` instead.",
            param="messages",
        )


class UnknownTokenId(InvalidRequest):
    def __init__(self) -> None:
        super().__init__("`tokens` has an id the model's encoding does not have.", param="tokens")


class Untranslatable(InvalidRequest):
    code = "unsupported_parameter"

    def __init__(self, param: str, why: str, droppable: bool = True) -> None:
        policy = (
            "the model's unsupported_params is 'reject'; 'drop' would leave it out and say so in a header"
            if droppable else "leaving it out would change what the request asks"
        )  # fmt: skip
        super().__init__(
            f"`{param}` {why}, and the deployment chosen for this model speaks only chat completions ({policy}).",
            param=param,
        )


class PreviousResponseNotFound(InvalidRequest):
    code = "previous_response_not_found"

    def __init__(self, response_id: str) -> None:
        super().__init__(f"Previous response with id '{_shown(response_id)}' not found.", param="previous_response_id")


class InvalidBatchInput(InvalidRequest):
    """A batch's input file is not what the Batch API takes: the line (counted from 1) and what is wrong."""

    code = "invalid_batch_input"

    def __init__(self, line: int | None, problem: str) -> None:
        where = "The input file" if line is None else f"Line {line} of the input file"
        super().__init__(f"{where}: {problem}", param="input_file_id")


class FileNotFound(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"

    def __init__(self, file_id: str) -> None:
        super().__init__(f"No such File object: {_shown(file_id)}", param="file_id")


class BatchNotFound(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"

    def __init__(self, batch_id: str) -> None:
        super().__init__(f"No batch with id '{_shown(batch_id)}' found.", param="batch_id")


class BatchNotCancellable(GatewayError):
    status_code = 409
    error_type = "invalid_request_error"
    code = "batch_not_cancellable"

    def __init__(self, batch_id: str, status: str) -> None:
        super().__init__(f"Batch '{_shown(batch_id)}' is {status}: only a batch still running can be cancelled.")


class BatchStillRunning(GatewayError):
    status_code = 409
    error_type = "invalid_request_error"
    code = "batch_still_running"

    def __init__(self, batch_id: str, wanted: str) -> None:
        super().__init__(f"Message batch '{_shown(batch_id)}' is still processing: {wanted} once it has ended.")


class FileTooLarge(GatewayError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "file_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"The file is larger than this gateway takes ({limit} bytes; server.max_file_bytes).", param="file")


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


class ResponseNotFound(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"

    def __init__(self, response_id: str) -> None:
        super().__init__(f"No response with id '{_shown(response_id)}' found.", param="response_id")


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
            headers={Header.RETRY_AFTER: str(max(1, math.ceil(retry_after)))},
        )


class TooManyConnections(GatewayError):
    """The gateway has ``server.max_connections`` open; this connection is answered, then closed."""

    status_code = 503
    error_type = "api_error"
    code = "too_many_connections"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The gateway has its maximum of {limit} connections open (server.max_connections); try again shortly.",
            headers={Header.RETRY_AFTER: "1", "connection": "close"},
        )


class DeadlineExceeded(GatewayError):
    status_code = 504
    error_type = "timeout_error"
    code = "deadline_exceeded"

    def __init__(self, seconds: float) -> None:
        super().__init__(f"The request did not complete within its {seconds:g} s deadline.")


# OpenAI's endpoints that the gateway does not serve; docs/compatibility.md lists them too.
UNSUPPORTED_OPENAI_PATHS = (
    "/v1/audio/",
    "/v1/images/",
    "/v1/uploads",
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


def _shown(client_text: str) -> str:
    """A client's id as an error message names it: never at length."""
    return client_text if len(client_text) <= 64 else f"{client_text[:64]}..."


def not_found_error(method: str, path: str) -> GatewayError:
    if path.startswith(UNSUPPORTED_OPENAI_PATHS):
        return EndpointNotSupported(method, path)
    return RouteNotFound(method, path)


class InvalidApiKey(GatewayError):
    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"

    def __init__(self, presented: bool) -> None:
        message = (
            "Incorrect API key provided."
            if presented
            else "You didn't provide an API key: send it as `Authorization: Bearer <key>` (or an `api-key` or `x-api-key` header)."
        )
        super().__init__(message)


class InvalidToken(GatewayError):
    """A JSON Web Token that server.jwt does not accept; ``why`` names the check it failed, never the token."""

    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_token"

    def __init__(self, why: str) -> None:
        super().__init__(f"The bearer token was refused: {why}.")


class ModelNotAllowed(GatewayError):
    status_code = 403
    error_type = "permission_error"
    code = "model_not_allowed"

    def __init__(self, key: str, model: str) -> None:
        super().__init__(f"The API key '{key}' may not use the model `{model}`.", param="model")


class RateLimitReached(GatewayError):
    status_code = 429
    error_type = "requests"
    code = "rate_limit_exceeded"

    def __init__(self, key: KeyLimitsConfig, admission: Admission) -> None:
        limit = f"{key.rpm} requests" if admission.refused_by == "requests" else f"{key.tpm} tokens"
        self.error_type = admission.refused_by or "requests"  # OpenAI's type names the limit: requests or tokens
        super().__init__(
            f"Rate limit reached for API key '{key.name}': {limit} per minute. "
            f"Try again in {format_duration(admission.retry_after)}.",
            headers={**admission.headers(), Header.RETRY_AFTER: str(max(1, math.ceil(admission.retry_after)))},
        )


class BudgetExhausted(GatewayError):
    status_code = 429
    error_type = "insufficient_quota"
    code = "insufficient_quota"

    def __init__(self, key: KeyLimitsConfig) -> None:
        super().__init__(
            f"The API key '{key.name}' has used its budget of {key.budget_tokens} tokens.",
            # Retrying cannot help: the official SDKs read this and stop.
            headers={Header.SHOULD_RETRY: "false", Header.BUDGET_REMAINING_TOKENS: "0"},
        )


class DollarBudgetSpent(GatewayError):
    status_code = 429
    error_type = "insufficient_quota"
    code = "insufficient_quota"

    def __init__(self, described: str, resets_at: datetime | None) -> None:
        when = "it does not reset" if resets_at is None else f"it resets at {resets_at.isoformat()}"
        super().__init__(
            f"This request would pass the {described} ({when}).",
            # Retrying now cannot help: the official SDKs read this and stop.
            headers={Header.SHOULD_RETRY: "false", Header.BUDGET_REMAINING_USD: "0"},
        )


class ModelNotPriced(GatewayError):
    status_code = 403
    error_type = "permission_error"
    code = "model_not_priced"

    def __init__(self, key: str, model: str) -> None:
        super().__init__(
            f"The API key '{key}' has a budget in dollars, and `{model}` has no known price, so what it would "
            "spend cannot be held to it: give the model a `price:` in providers.yaml.",
            param="model",
        )


class AdminKeyRequired(GatewayError):
    status_code = 403
    error_type = "permission_error"
    code = "admin_key_required"

    def __init__(self, configured: bool) -> None:
        super().__init__(
            "This endpoint needs one of the gateway's admin keys."
            if configured
            else "This endpoint needs an admin key, and none is configured: set `server.admin_keys`."
        )


class LedgerDisabled(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "usage_ledger_disabled"

    def __init__(self) -> None:
        super().__init__("The usage ledger is turned off on this gateway (`server.usage_ledger: false`).")


class ReloadRefused(GatewayError):
    """A configuration reload that was not done: the configuration serving before still serves.

    409 when the gateway cannot reload (no file to read, or a change that needs
    a restart), 422 when the new file cannot be served (invalid, or a new local
    model that failed to load).
    """

    error_type = "invalid_request_error"

    def __init__(self, message: str, status_code: int, code: str) -> None:
        super().__init__(message, status_code=status_code, code=code)


class ConfigError(Exception):
    """The config file cannot be used; ``problems`` are ``path: what is wrong`` lines."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))

    def __str__(self) -> str:
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        return f"invalid config {self.source}:\n{lines}"
