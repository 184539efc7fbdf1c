"""The API description served at /openapi.json: every endpoint, and every status each can answer.

FastAPI describes the routes it serves; the relay endpoints bypass it
(gateway/relay.py) and are added here from their request models. Then every
operation's responses are replaced by what the gateway really answers:

* its success, as FastAPI or the relay describes it (FastAPI's 422 goes: the
  gateway answers a validation error with a 400, gateway/app.py);
* what any request can get, whatever its path (``EVERY_REQUEST``): a
  malformed request, another method, a slow client, a long URL or head, a
  foreign Host, a bug, the connection cap; 401 on ``/v1/`` when keys are
  configured;
* 413 and 415 where the operation takes a JSON body;
* what the endpoint itself answers (``OWN_STATUSES``), and for the relay
  endpoints what an upstream can (``RELAY_STATUSES``): a 4xx or 5xx an
  upstream answers is passed through with its status, hence ``4XX``/``5XX``.

tests/gateway/http/test_openapi_conformance.py runs schemathesis against a served
gateway and fails on any status an operation answers that is not listed
here by number.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from gateway.http.media.routes import MEDIA_ROUTES
from gateway.http.relay import RELAY_PATHS
from providers.wire import Door

# What each status means, wherever it is answered.
MEANINGS: dict[str, str] = {
    "400": "The request is invalid: a parameter (named in `error.param`), its JSON, or its HTTP framing.",
    "401": "No known API key, when `server.api_keys` are configured (on a model endpoint, also an upstream "
    "refusing its provider key).",
    "403": "The key may not use that model, or the endpoint needs an admin key (on a model endpoint, also an "
    "upstream's 403).",
    "404": "No such model (`model_not_found`), or nothing to answer at this URL.",
    "405": "The path does not take that method; `Allow` lists those it takes.",
    "409": "Requests are running on the engine (`engine_busy`): nothing was changed; try again once they finished. "
    "For a batch's cancel: the batch has ended (`batch_not_cancellable`). For a LoRA adapter's load: the engine "
    "holds `max_loras` already (`lora_limit_reached`). For /admin/reload: no config file to read again "
    "(`reload_unavailable`), or a change only a restart applies (`restart_required`).",
    "408": "The request's headers or body arrived too slowly (`server.header_timeout`, `body_timeout`, "
    "`body_min_rate`); the connection is closed.",
    "413": "The body is larger than `server.max_body_bytes` (an upload to /v1/files: `server.max_file_bytes`).",
    "414": "The URL is longer than `server.max_header_bytes`.",
    "415": "The body is not declared `Content-Type: application/json`.",
    "421": "The Host header names a host this gateway does not answer to (`server.allowed_hosts`).",
    "422": "For /admin/reload: the file is invalid (`invalid_config`, with the lines `switchyard serve` prints) or "
    "a new local model failed to load (`model_load_failed`); the configuration serving before still serves.",
    "429": "A rate limit or the budget of the key, or the upstream's rate limit.",
    "431": "More header fields than `server.max_header_count`, or more bytes of them than `server.max_header_bytes`.",
    "500": "A bug in the gateway (the details are in its log only), or a local model's failed step.",
    "502": "The upstream could not be reached, or its answer could not be read.",
    "503": "The gateway has `server.max_connections` open; or every deployment is cooling down, or a local model "
    "is loading; or, for `/health/ready`, not ready.",
    "504": "The request's deadline passed, or the upstream did not answer in time.",
    "4XX": "Another 4xx an upstream answered, passed through with its status and its error in OpenAI's shape.",
    "5XX": "Another 5xx an upstream answered, passed through with its status.",
}
EVERY_REQUEST = ("400", "405", "408", "414", "421", "431", "500", "503")
# Statuses of the endpoints' own doing, beyond EVERY_REQUEST, by path.
OWN_STATUSES: dict[str, tuple[str, ...]] = {
    "/v1/models/{model_id}": ("404",),
    "/v1/usage": ("401", "403", "404"),  # 401 even on an open gateway: the usage needs an admin key
    "/v1/tokenize": ("403", "404"),
    "/v1/detokenize": ("403", "404"),
    "/v1/messages/count_tokens": ("401", "403", "404"),
    "/v1/responses/{response_id}": ("401", "404"),
    "/v1/responses/{response_id}/input_items": ("401", "404"),
    # Files and batches (gateway/routes/files.py, batches.py): each its key's only, 404 for another key's.
    "/v1/files/{file_id}": ("404",),
    "/v1/files/{file_id}/content": ("404",),
    "/v1/batches": ("403", "429"),  # a line's model the key may not use; a native batch's spent budget
    "/v1/batches/{batch_id}": ("404",),
    "/v1/batches/{batch_id}/cancel": ("404", "409"),
    # Anthropic's Message Batches (gateway/routes/message_batches.py): the same rules, Anthropic's error shape.
    "/v1/messages/batches": ("403", "429"),
    "/v1/messages/batches/{message_batch_id}": ("404", "409"),  # DELETE of one still processing: 409
    "/v1/messages/batches/{message_batch_id}/cancel": ("404", "409"),
    "/v1/messages/batches/{message_batch_id}/results": ("404", "409"),
    # vLLM's operational endpoints (gateway/routes/engines.py): an admin key, and 409 while requests run.
    "/reset_prefix_cache": ("401", "403", "409"),
    "/sleep": ("401", "403", "409"),
    "/wake_up": ("401", "403"),
    "/is_sleeping": ("401", "403"),
    "/v1/load_lora_adapter": ("401", "403", "409"),  # 401 even on an open gateway: an admin key is needed
    "/v1/unload_lora_adapter": ("401", "403", "404", "409"),
    "/admin/reload": ("401", "403", "409", "422"),  # gateway/routes/admin.py: refusals change nothing
}
RELAY_STATUSES = ("401", "403", "404", "429", "502", "504", "4XX", "5XX")
_HEADERS: dict[str, dict[str, Any]] = {
    "405": {"Allow": {"required": True, "schema": {"type": "string"}, "description": "The methods the path takes."}},
    "429": {"Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait, when known."}},
    "503": {"Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait, when known."}},
}
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    """The gateway's OpenAPI document, built once."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    _add_relay_endpoints(schema["paths"], components)
    _add_media_endpoints(schema["paths"], components)
    components["ErrorResponse"] = ERROR_SCHEMA
    for component in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 bodies, never sent
        components.pop(component, None)
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            operation["responses"] = _responses(path, operation)
    app.openapi_schema = schema
    return schema


def _add_relay_endpoints(paths: dict[str, Any], components: dict[str, Any]) -> None:
    for path, door in RELAY_PATHS.items():
        model = door.request_model
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(model_schema.pop("$defs", {}))
        components[model.__name__] = model_schema
        anthropic = isinstance(door.label, Door)
        if door.answer_here is not None:
            summary, description = "Count message tokens", "Anthropic-compatible; counted by the gateway (docs/compatibility.md)."
        elif anthropic:
            summary = "Create message"
            description = "Anthropic-compatible, routed as chat completions; see docs/compatibility.md for each field."
        else:
            summary = f"Create {door.endpoint.value.replace('/', ' ').rstrip('s')}"
            description = "OpenAI-compatible; fields not listed here are forwarded to the upstream unchanged."
        paths[path] = {
            "post": {
                "tags": ["anthropic" if anthropic else "openai"],
                "summary": summary,
                "description": description,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
                },
                "responses": {
                    "200": {
                        "description": "The upstream's answer: JSON, or an event stream when `stream` is true.",
                        "content": {"application/json": {}, "text/event-stream": {}},
                    },
                },
            }
        }


# What each media URL answers on success (docs/media.md).
_MEDIA_ANSWERS = {
    "/v1/audio/transcriptions": ("JSON (json, verbose_json), text (text, srt, vtt), or events when `stream` is true.",
                                 ("application/json", "text/plain", "text/event-stream")),
    "/v1/audio/translations": ("JSON (json, verbose_json), or text (text, srt, vtt).", ("application/json", "text/plain")),
    "/v1/audio/speech": ("The audio, relayed as it arrives (or events, with `stream_format: sse`).",
                         ("application/octet-stream", "text/event-stream")),
    "/v1/images/generations": ("The images, or events when `stream` is true.", ("application/json", "text/event-stream")),
    "/v1/images/edits": ("The images, or events when `stream` is true.", ("application/json", "text/event-stream")),
}  # fmt: skip


def _add_media_endpoints(paths: dict[str, Any], components: dict[str, Any]) -> None:
    for path, route in MEDIA_ROUTES.items():
        model = route.request_model
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(model_schema.pop("$defs", {}))
        components[model.__name__] = model_schema
        body_type = "multipart/form-data" if route.multipart else "application/json"
        description, answer_types = _MEDIA_ANSWERS[path]
        paths[path] = {
            "post": {
                "tags": ["openai"],
                "summary": route.summary,
                "description": "OpenAI-compatible, routed to the model's deployments that offer it (docs/media.md); "
                "fields not listed here are forwarded unchanged.",
                "requestBody": {
                    "required": True,
                    "content": {body_type: {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
                },
                "responses": {"200": {"description": description, "content": {kind: {} for kind in answer_types}}},
            }
        }


def _responses(path: str, operation: dict[str, Any]) -> dict[str, Any]:
    """The operation's successes as described, then each error status it can answer."""
    successes = {status: answer for status, answer in operation["responses"].items() if status.startswith("2")}
    statuses = set(EVERY_REQUEST) | set(OWN_STATUSES.get(path, ()))
    if path.startswith("/v1/"):
        statuses.add("401")
    if "requestBody" in operation:
        statuses.update(("413", "415"))
    if (path in RELAY_PATHS and RELAY_PATHS[path].answer_here is None) or path in MEDIA_ROUTES:
        statuses.update(RELAY_STATUSES)
    errors = {}
    for status in sorted(statuses):
        errors[status] = {"description": MEANINGS[status], "content": _ERROR_CONTENT}
        if status in _HEADERS:
            errors[status]["headers"] = _HEADERS[status]
    return successes | errors
