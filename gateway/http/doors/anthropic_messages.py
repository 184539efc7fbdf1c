"""Anthropic's Messages API as a door onto chat completions: requests in, answers and errors out.

Pure functions, no I/O. A Messages request becomes the chat payload the
router takes as ``Endpoint.CHAT``, so routing, retries, fallbacks, key
limits, usage and the ledger see an ordinary chat request; the chat answer
comes back as a Messages answer (the stream's events: ``anthropic_stream``)::

    Messages request                 chat completions payload
    system (string or text blocks)   a first system message
    text, image blocks               content parts; an image's base64 or url source -> image_url
    tool_use blocks (assistant)      tool_calls, input as its arguments' JSON
    tool_result blocks (user)        one role tool message each, before the rest of that turn
    stop_sequences                   stop
    metadata.user_id                 user
    tools[].input_schema             tools[].function.parameters
    tool_choice                      auto / required (any) / a named function (tool) / none
    disable_parallel_tool_use        parallel_tool_calls: false
    max_tokens, temperature, top_p, top_k, stream (with include_usage)   as they are

Whatever has no chat equivalent (``thinking``, documents, server tools, a
tool_result's image, ...) is a 400 naming it, or, when the model's
``unsupported_params`` is ``drop``, left out and named in
``x-switchyard-dropped-params``. ``cache_control`` is only a hint: it is
left out without a word. docs/compatibility.md has the whole table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import InvalidRequest
from gateway.http.doors.translation import Losses, Translated, string_field
from gateway.routing.fallbacks import ROUTING_FIELDS
from gateway.routing.router import NativeForm
from providers.errors import OpenAIError, UpstreamProtocolError
from providers.wire import Door, Usage

# The request fields translated here; ``cache_control`` (prompt caching) is a hint and is ignored.
TRANSLATED_FIELDS = frozenset({
    "model", "max_tokens", "messages", "system", "stop_sequences", "temperature", "top_p", "top_k",
    "stream", "metadata", "tools", "tool_choice",
})  # fmt: skip
IGNORED_FIELDS = frozenset({"cache_control"}) | ROUTING_FIELDS  # the gateway's own fields pass to the router as they are
# Anthropic's error type for each status it shares with the gateway; the rest by class (``error_type_of``).
_ERROR_TYPES = {
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use", "content_filter": "refusal"}

class _Strict(BaseModel):
    # strict: "max_tokens": "10" is an error, not a coercion; other fields are looked at by the translation.
    model_config = ConfigDict(extra="allow", strict=True)


class MessageParam(_Strict):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class CountTokensRequest(_Strict):
    """``POST /v1/messages/count_tokens``: what is counted."""

    model: str = Field(min_length=1)
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None


class MessagesRequest(CountTokensRequest):
    """``POST /v1/messages``: the fields the gateway translates (others: see the module's docstring)."""

    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    stream: bool | None = None
    metadata: dict[str, Any] | None = None


def messages_to_chat(request: dict[str, Any]) -> Translated:
    """A checked Messages request (``MessagesRequest``) as a chat completions payload."""
    refuse = Losses()
    for name, value in request.items():
        if name in TRANSLATED_FIELDS or name in IGNORED_FIELDS or value is None:
            continue
        if name == "thinking" and value == {"type": "disabled"}:
            continue  # asks for nothing
        refuse(name)
    payload: dict[str, Any] = {"model": request["model"], "messages": chat_messages(request, refuse)}
    payload.update({name: request[name] for name in ROUTING_FIELDS if name in request})
    for name in ("max_tokens", "temperature", "top_p", "top_k"):  # count_tokens has no max_tokens
        if request.get(name) is not None:
            payload[name] = request[name]
    if request.get("stop_sequences"):
        payload["stop"] = request["stop_sequences"]
    payload.update(_tool_fields(request, refuse))
    metadata = request.get("metadata") or {}
    for name, value in metadata.items():
        if name == "user_id" and isinstance(value, str):
            payload["user"] = value
        elif value is not None:
            refuse(f"metadata.{name}")
    if request.get("stream") is True:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}  # message_delta carries the usage
    return Translated(payload, request, NativeForm(Door.MESSAGES, request, tuple(refuse.lost)))


def chat_messages(request: dict[str, Any], refuse: Callable[[str], None]) -> list[dict[str, Any]]:
    """``system`` and ``messages`` as chat messages."""
    messages: list[dict[str, Any]] = []
    system = request.get("system")
    if system is not None:
        text = system if isinstance(system, str) else _joined_text(system, "system", refuse)
        if text:
            messages.append({"role": "system", "content": text})
    for position, message in enumerate(request["messages"]):
        content, path = message["content"], f"messages[{position}]"
        if isinstance(content, str):
            messages.append({"role": message["role"], "content": content})
        elif message["role"] == "assistant":
            messages.append(_assistant_message(content, path, refuse))
        else:
            messages += _user_messages(content, path, refuse)
    return messages


def _user_messages(blocks: list[dict[str, Any]], path: str, refuse: Callable[[str], None]) -> list[dict[str, Any]]:
    """A user turn: its tool results as role tool messages (they must follow the assistant's calls), then the rest."""
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for position, block in enumerate(blocks):
        where = f"{path}.content[{position}]"
        kind = _block_type(block, where)
        if kind == "text":
            parts.append({"type": "text", "text": string_field(block, "text", where)})
        elif kind == "image":
            part = _image_part(block, where)
            if part is None:
                refuse(f"{where}.source")
            else:
                parts.append(part)
        elif kind == "tool_result":
            results.append(_tool_message(block, where, refuse))
        else:
            refuse(where)
    if not parts:
        return results
    if len(parts) == 1 and parts[0]["type"] == "text":
        return [*results, {"role": "user", "content": parts[0]["text"]}]
    return [*results, {"role": "user", "content": parts}]


def _assistant_message(blocks: list[dict[str, Any]], path: str, refuse: Callable[[str], None]) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for position, block in enumerate(blocks):
        where = f"{path}.content[{position}]"
        kind = _block_type(block, where)
        if kind == "text":
            texts.append(string_field(block, "text", where))
        elif kind == "tool_use":
            arguments = block.get("input", {})
            if not isinstance(arguments, dict):
                raise InvalidRequest(f"Invalid value for '{where}.input': it must be an object.", param=f"{where}.input")
            calls.append({
                "id": string_field(block, "id", where),
                "type": "function",
                "function": {"name": string_field(block, "name", where), "arguments": orjson.dumps(arguments).decode()},
            })  # fmt: skip
        else:
            refuse(where)  # thinking, redacted_thinking, server tool blocks: nothing in chat carries them
    message: dict[str, Any] = {"role": "assistant", "content": "\n\n".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _tool_message(block: dict[str, Any], where: str, refuse: Callable[[str], None]) -> dict[str, Any]:
    content = block.get("content", "")
    if isinstance(content, list):
        content = _joined_text(content, f"{where}.content", refuse)
    elif not isinstance(content, str):
        raise InvalidRequest(f"Invalid value for '{where}.content': a string or text blocks.", param=f"{where}.content")
    if block.get("is_error") is True:
        content = f"Error: {content}"  # chat has no error flag on a tool's answer: say it in the text
    return {"role": "tool", "tool_call_id": string_field(block, "tool_use_id", where), "content": content}


def _joined_text(blocks: list[Any], path: str, refuse: Callable[[str], None]) -> str:
    """Text blocks as one text (``system``, a tool result); any other block is refused."""
    texts = []
    for position, block in enumerate(blocks):
        where = f"{path}[{position}]"
        if not isinstance(block, dict):
            raise InvalidRequest(f"Invalid value for '{where}': a content block object.", param=where)
        if _block_type(block, where) == "text":
            texts.append(string_field(block, "text", where))
        else:
            refuse(where)
    return "\n\n".join(texts)


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any] | None:
    """An image block as an image_url part; None for a source chat cannot take (a file id)."""
    source = block.get("source")
    if not isinstance(source, dict):
        raise InvalidRequest(f"Missing required parameter: '{where}.source'.", param=f"{where}.source")
    kind = source.get("type")
    if kind == "base64":
        media_type = string_field(source, "media_type", f"{where}.source")
        url = f"data:{media_type};base64,{string_field(source, 'data', f'{where}.source')}"
    elif kind == "url":
        url = string_field(source, "url", f"{where}.source")
    else:
        return None
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_fields(request: dict[str, Any], refuse: Callable[[str], None]) -> dict[str, Any]:
    """``tools`` and ``tool_choice`` as chat's ``tools``, ``tool_choice`` and ``parallel_tool_calls``."""
    tools = []
    for position, tool in enumerate(request.get("tools") or ()):
        where = f"tools[{position}]"
        if tool.get("type") not in (None, "custom"):
            refuse(where)  # a server tool (web search, bash, ...): Anthropic runs those, no upstream here does
            continue
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise InvalidRequest(f"Missing required parameter: '{where}.input_schema'.", param=f"{where}.input_schema")
        function: dict[str, Any] = {"name": string_field(tool, "name", where), "parameters": schema}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        if tool.get("strict") is True:
            function["strict"] = True
        tools.append({"type": "function", "function": function})
    choice = request.get("tool_choice")
    if not tools:
        return {}
    fields: dict[str, Any] = {"tools": tools}
    if choice is None:
        return fields
    kind = choice.get("type")
    if kind == "tool":
        fields["tool_choice"] = {"type": "function", "function": {"name": string_field(choice, "name", "tool_choice")}}
    elif kind in ("auto", "any", "none"):
        fields["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
    else:
        raise InvalidRequest(
            "Invalid value for 'tool_choice.type': one of auto, any, tool or none.", param="tool_choice.type"
        )
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        fields["parallel_tool_calls"] = False
    return fields


def _block_type(block: dict[str, Any], where: str) -> str:
    kind = block.get("type")
    if not isinstance(kind, str):
        raise InvalidRequest(f"Missing required parameter: '{where}.type'.", param=f"{where}.type")
    return kind


def chat_to_message(answer: dict[str, Any], request: dict[str, Any], usage: Usage | None) -> dict[str, Any]:
    """A chat completion as a Messages answer; ``usage``: the gateway's count, when the answer has none."""
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamProtocolError("the upstream's chat answer has no choices")
    choice = choices[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if isinstance(message.get("content"), str) and message["content"]:
        content.append({"type": "text", "text": message["content"]})
    calls = message.get("tool_calls") or []
    for call in calls:
        function = call.get("function") or {}
        content.append({
            "type": "tool_use", "id": call.get("id") or "", "name": function.get("name") or "",
            "input": tool_input(function.get("arguments")),
        })  # fmt: skip
    stop_reason, stop_sequence = stop_reason_of(choice, request, bool(calls))
    return {
        "id": message_id(answer.get("id")),
        "type": "message",
        "role": "assistant",
        "model": request["model"],
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": messages_usage(answer.get("usage"), usage),
    }


def tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments (JSON text) as the object a tool_use block's ``input`` is."""
    if not arguments:
        return {}
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise UpstreamProtocolError("the upstream's tool call arguments are not a JSON object")
    return parsed


def stop_reason_of(choice: dict[str, Any], request: dict[str, Any], called: bool) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) for a chat choice's finish_reason.

    ``stop`` is ``stop_sequence`` only when the answer says which sequence
    matched (vLLM's ``stop_reason``); OpenAI does not say, so it is ``end_turn``.
    """
    finish = choice.get("finish_reason")
    if finish in _STOP_REASONS:
        return _STOP_REASONS[finish], None
    if called:
        return "tool_use", None
    matched = choice.get("stop_reason")
    if isinstance(matched, str) and matched in (request.get("stop_sequences") or ()):
        return "stop_sequence", matched
    return "end_turn", None


def messages_usage(reported: Any, counted: Usage | None) -> dict[str, int]:
    """Chat usage in Messages terms: ``input_tokens`` are those not read from the cache, as Anthropic counts."""
    if isinstance(reported, dict) and isinstance(reported.get("prompt_tokens"), int):
        prompt, completion = reported["prompt_tokens"], reported.get("completion_tokens") or 0
        details = reported.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
    else:
        prompt = counted.prompt_tokens if counted is not None else 0
        completion = counted.completion_tokens if counted is not None else 0
        cached = None
    if not isinstance(cached, int):
        return {"input_tokens": prompt, "output_tokens": completion}
    return {
        "input_tokens": max(prompt - cached, 0),
        "output_tokens": completion,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,  # OpenAI-style usage does not report cache writes
    }


def message_id(chat_id: Any) -> str:
    return f"msg_{chat_id.removeprefix('chatcmpl-')}" if isinstance(chat_id, str) and chat_id else "msg_switchyard"


def error_type_of(error: OpenAIError) -> str:
    """Anthropic's error type for ``error``, by its HTTP status."""
    status = error.status_code
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def error_body(error: OpenAIError) -> bytes:
    """``error`` in Anthropic's shape: ``{"type": "error", "error": {"type", "message"}}``."""
    return orjson.dumps({"type": "error", "error": {"type": error_type_of(error), "message": error.message}})
