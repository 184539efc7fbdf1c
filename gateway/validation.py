"""Checks on request bodies before anything is sent upstream.

The models type the parameters the gateway knows and allow every other
field, which is forwarded unchanged (vLLM's ``top_k``, a provider's own
extras). They check and document; the forwarded body is the client's dict,
never a re-serialised model, so no value is coerced or dropped on the way.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from providers import Endpoint

from .errors import InvalidRequest

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]
TokenIds = list[int]


class _Body(BaseModel):
    # strict: "temperature": "hot" is an error, not a coercion.
    model_config = ConfigDict(extra="allow", strict=True)


class ChatMessage(_Body):
    role: Role
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class StreamOptions(_Body):
    include_usage: bool | None = None


class _Sampling(_Body):
    model: str = Field(min_length=1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=128)
    max_tokens: int | None = Field(None, ge=0)
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    seed: int | None = None
    user: str | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | TokenIds | list[TokenIds] | None
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)
    logprobs: int | None = Field(None, ge=0)


class EmbeddingRequest(_Body):
    model: str = Field(min_length=1)
    input: str | list[str] | TokenIds | list[TokenIds]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


class ModerationRequest(_Body):
    # OpenAI lets `model` default; a gateway must know where to route, so it is required here.
    model: str = Field(min_length=1)
    input: str | list[str] | list[dict[str, Any]]


REQUEST_MODELS: dict[Endpoint, type[_Body]] = {
    Endpoint.CHAT: ChatCompletionRequest,
    Endpoint.COMPLETIONS: CompletionRequest,
    Endpoint.EMBEDDINGS: EmbeddingRequest,
    Endpoint.MODERATIONS: ModerationRequest,
}


def parse_body(body: bytes, endpoint: Endpoint) -> dict[str, Any]:
    """Decode and check a request body; raise InvalidRequest naming the bad param."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"We could not parse the JSON body of your request: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        REQUEST_MODELS[endpoint].model_validate(payload)
    except ValidationError as exc:
        raise _invalid_request(exc, payload) from None
    return payload


def _invalid_request(exc: ValidationError, payload: dict[str, Any]) -> InvalidRequest:
    errors = exc.errors(include_url=False)
    param = _param_path(errors[0], payload)
    if errors[0]["type"] == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param)
    # A union reports one error per member; say them together.
    reasons = dict.fromkeys(e["msg"] for e in errors if _param_path(e, payload) == param)
    return InvalidRequest(f"Invalid value for '{param}': {' or '.join(reasons)}.", param=param)


def _param_path(error: Any, payload: Any) -> str:
    """The error's location in the client's own terms: ``messages[0].role``.

    Pydantic's location also names union members (``stop.str``); only the
    parts that exist in the payload are kept, plus the missing field itself.
    """
    path = ""
    current = payload
    location = error["loc"]
    for position, part in enumerate(location):
        if isinstance(part, int) and isinstance(current, list) and part < len(current):
            path, current = f"{path}[{part}]", current[part]
        elif isinstance(part, str) and isinstance(current, dict) and part in current:
            path, current = (f"{path}.{part}" if path else part), current[part]
        else:
            if error["type"] == "missing" and position == len(location) - 1:
                path = f"{path}.{part}" if path else str(part)
            break
    return path
