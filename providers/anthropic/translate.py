"""Chat completions to Anthropic's Messages API and back, as pure functions.

    messages_request(payload)         an OpenAI chat body (parameter map applied) -> a POST /v1/messages body
    chat_completion(message)          a Messages answer -> an OpenAI chat.completion
    usage_of(usage)                   Anthropic's usage -> OpenAI's, cache reads as cached_tokens
    ChunkTranslator.feed(event)       one stream event -> the chat.completion.chunk events it becomes
    anthropic_error(status, body, ..) a non-2xx answer -> the ProviderError that says what to do next

Parameters the Messages API has no room for (``n`` > 1, ``logprobs``,
penalties, ``seed``, ...) never reach here: the preset's parameter map
drops or rejects them first (``providers/presets.py``). Fields this module
does not know are forwarded as sent: they are Anthropic's own (``top_k``,
``thinking``) or the upstream's 400 names them.

Anthropic requires ``max_tokens``; a request with neither ``max_tokens``
nor ``max_completion_tokens`` gets ``DEFAULT_MAX_TOKENS``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from providers.errors import (
    ContextWindowExceeded,
    ProviderError,
    StreamInterrupted,
    UpstreamRejected,
    UpstreamServerError,
    error_from_response,
)

DEFAULT_MAX_TOKENS = 4096

# OpenAI fields this module turns into Anthropic's; every other field is forwarded as sent. The last
# four reach here only at the one value the Messages API means anyway (the parameter map saw to it).
_TRANSLATED = frozenset({
    "messages", "max_tokens", "stop", "user", "tools", "tool_choice", "parallel_tool_calls", "stream_options",
    "n", "logprobs", "response_format", "modalities",
})  # fmt: skip

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",  # a server tool's long turn paused: the answer so far is whole
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Anthropic's 529 is no registered HTTP status: the client is told 503, as for any overloaded service.
_OVERLOADED = 529
# How Anthropic words a prompt past the model's window, in the message of a 400 invalid_request_error.
_PROMPT_TOO_LONG = "prompt is too long"


def _untranslatable(message: str, param: str) -> UpstreamRejected:
    """A request the Messages API has no form for: the client's to change, so a 400 and no retry."""
    return UpstreamRejected(message, param=param, code="untranslatable")


def messages_request(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The Messages API body for a chat completions body."""
    system, messages = _messages(payload.get("messages") or [])
    body: dict[str, Any] = {key: value for key, value in payload.items() if key not in _TRANSLATED and value is not None}
    body["messages"] = messages
    if system:
        body["system"] = system[0]["text"] if len(system) == 1 else system
    max_tokens = payload.get("max_tokens")
    body["max_tokens"] = max_tokens if isinstance(max_tokens, int) else DEFAULT_MAX_TOKENS
    stop = payload.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if payload.get("user"):
        body["metadata"] = {"user_id": payload["user"]}
    tools = payload.get("tools")
    if tools:
        body["tools"] = [_tool(tool) for tool in tools]
    choice = _tool_choice(payload.get("tool_choice"), payload.get("parallel_tool_calls"), bool(tools))
    if choice is not None:
        body["tool_choice"] = choice
    return body


def _messages(messages: list[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """System text blocks, and the turns: consecutive turns of one role merged, tool results in a user turn."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for position, message in enumerate(messages):
        role = message.get("role")
        if role in ("system", "developer"):
            system += [block for block in _blocks(message.get("content"), position) if block["type"] == "text"]
            continue
        if role == "tool":
            role, blocks = "user", [_tool_result(message)]
        elif role == "assistant":
            blocks = _blocks(message.get("content"), position) + [_tool_use(call) for call in message.get("tool_calls") or ()]
        elif role == "user":
            blocks = _blocks(message.get("content"), position)
        else:
            raise _untranslatable(f"messages[{position}]: the role {role!r} has no Messages API form", param="messages")
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:  # a turn of one text block is sent as a string, as most clients write it
        content = turn["content"]
        if len(content) == 1 and content[0]["type"] == "text":
            turn["content"] = content[0]["text"]
    return system, turns


def _blocks(content: Any, position: int) -> list[dict[str, Any]]:
    """A message's content as Anthropic's blocks; empty text is left out (the API refuses empty text blocks)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            if part.get("text"):
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            blocks.append(_image(image.get("url") if isinstance(image, Mapping) else image, position))
        elif kind == "refusal":
            continue  # an earlier answer's refusal: nothing for the model to read
        else:
            raise _untranslatable(f"messages[{position}]: content of type {kind!r} has no Messages API form", param="messages")
    return blocks


def _image(url: Any, position: int) -> dict[str, Any]:
    """``data:`` URLs as base64 sources, http(s) URLs as URL sources."""
    if isinstance(url, str) and url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type, _, encoding = header.removeprefix("data:").partition(";")
        if encoding == "base64" and data:
            return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    elif isinstance(url, str) and url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise _untranslatable(f"messages[{position}]: an image must be a base64 data URL or an http(s) URL", param="messages")


def _tool_use(call: Mapping[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments") or "{}"
    try:
        tool_input = orjson.loads(arguments) if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError:
        raise _untranslatable(
            f"tool call {call.get('id')!r}: its arguments are not JSON, and Anthropic takes an object", param="messages"
        ) from None
    return {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": tool_input}


def _tool_result(message: Mapping[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.get("tool_call_id")}
    if isinstance(content, str):
        result["content"] = content
    elif content:
        result["content"] = [{"type": "text", "text": part.get("text", "")} for part in content if part.get("type") == "text"]
    return result


def _tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    function = tool.get("function") or {}
    translated = {"name": function.get("name"), "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
    if function.get("description"):
        translated["description"] = function["description"]
    return translated


def _tool_choice(choice: Any, parallel: Any, has_tools: bool) -> dict[str, Any] | None:
    translated: dict[str, Any] | None
    if choice is None:
        translated = {"type": "auto"} if parallel is False and has_tools else None
    elif choice == "auto":
        translated = {"type": "auto"}
    elif choice == "required":
        translated = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}  # takes no disable_parallel_tool_use
    elif isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
        translated = {"type": "tool", "name": choice["function"].get("name")}
    else:
        raise _untranslatable(f"tool_choice {choice!r} has no Messages API form", param="tool_choice")
    if translated is not None and parallel is False:
        translated["disable_parallel_tool_use"] = True
    return translated


def usage_of(usage: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI's usage: Anthropic's input_tokens count only what the cache neither read nor wrote."""
    cached = usage.get("cache_read_input_tokens") or 0
    prompt = (usage.get("input_tokens") or 0) + cached + (usage.get("cache_creation_input_tokens") or 0)
    completion = usage.get("output_tokens") or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def chat_completion(message: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI chat.completion for a Messages answer: text joined, tool_use blocks as tool_calls (ids kept)."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.get("content") or ():
        if block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append({"id": block.get("id"), "type": "function", "function": {"name": block.get("name"), "arguments": arguments}})
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None, "refusal": None}
    if calls:
        reply["tool_calls"] = calls
    choice = {"index": 0, "message": reply, "logprobs": None, "finish_reason": _finish_reason(message.get("stop_reason"))}
    return {
        "id": message.get("id"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": message.get("model"),
        "choices": [choice],
        "usage": usage_of(message.get("usage") or {}),
    }


def _finish_reason(stop_reason: Any) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


class ChunkTranslator:
    """One stream's translation: each Anthropic event in, the chat.completion.chunk events it becomes out.

    Invariant: an Anthropic content block index maps to one OpenAI tool-call
    index, counted from 0 in the order tool_use blocks start; text blocks have
    none. ``finished`` is True once ``message_stop`` was read, and only then.
    """

    def __init__(self, model: Any, usage_chunk_wanted: bool) -> None:
        self.finished = False
        self.usage: dict[str, Any] = {}  # Anthropic's usage so far: message_start's, updated by message_delta
        self._id: Any = None
        self._model = model
        self._created = int(time.time())
        self._tool_index: dict[int, int] = {}
        self._usage_chunk_wanted = usage_chunk_wanted

    def feed(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self._id = message.get("id")
            self._model = message.get("model") or self._model
            self.usage = dict(message.get("usage") or {})
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            return self._block_start(event.get("index"), event.get("content_block") or {})
        if kind == "content_block_delta":
            return self._block_delta(event.get("index"), event.get("delta") or {})
        if kind == "message_delta":
            self.usage.update({key: value for key, value in (event.get("usage") or {}).items() if value is not None})
            stop_reason = (event.get("delta") or {}).get("stop_reason")
            return [self._chunk({}, _finish_reason(stop_reason))] if stop_reason else []
        if kind == "message_stop":
            self.finished = True
            if self._usage_chunk_wanted:
                return [{**self._chunk_frame(), "choices": [], "usage": usage_of(self.usage)}]
            return []
        if kind == "error":
            raise stream_error(event.get("error") or {})
        return []  # ping, content_block_stop, and events added after this was written

    def _block_start(self, index: Any, block: Mapping[str, Any]) -> list[dict[str, Any]]:
        if block.get("type") == "tool_use" and isinstance(index, int):
            position = self._tool_index.setdefault(index, len(self._tool_index))
            call = {"index": position, "id": block.get("id"), "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""}}  # fmt: skip
            return [self._chunk({"tool_calls": [call]})]
        if block.get("type") == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        return []

    def _block_delta(self, index: Any, delta: Mapping[str, Any]) -> list[dict[str, Any]]:
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        if kind == "input_json_delta" and delta.get("partial_json") and index in self._tool_index:
            call = {"index": self._tool_index[index], "function": {"arguments": delta["partial_json"]}}
            return [self._chunk({"tool_calls": [call]})]
        return []  # thinking and signature deltas have no chat completions form

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {**self._chunk_frame(), "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

    def _chunk_frame(self) -> dict[str, Any]:
        return {"id": self._id, "object": "chat.completion.chunk", "created": self._created, "model": self._model}


def stream_error(error: Mapping[str, Any], provider: str | None = None) -> StreamInterrupted:
    """An ``error`` event after the stream began: the answer is incomplete, whatever the error's type."""
    kind, message = error.get("type") or "api_error", error.get("message") or "the upstream reported an error"
    return StreamInterrupted(f"the stream failed: {kind}: {message}", provider=provider)


def anthropic_error(
    status: int, body: bytes, headers: Mapping[str, str] | None = None, *, provider: str | None = None
) -> ProviderError:
    """The error tree's class for an Anthropic error answer (``{"type": "error", "error": {type, message}}``).

    The general mapping reads the shape; two cases are Anthropic's own: a 400
    saying the prompt is too long is a ContextWindowExceeded (so
    ``context_window_fallbacks`` apply), and a 529 ``overloaded_error`` is a
    retryable server error the client sees as 503.
    """
    error = error_from_response(status, body, headers, provider=provider)
    kwargs: dict[str, Any] = {"error_type": error.error_type, "param": error.param, "provider": provider,
                              "retry_after": error.retry_after}  # fmt: skip
    if status == _OVERLOADED:
        return UpstreamServerError(error.message, status_code=503, code=error.code, **kwargs)
    if status == 400 and type(error) is UpstreamRejected and _PROMPT_TOO_LONG in error.message.lower():
        return ContextWindowExceeded(error.message, status_code=400, **kwargs)
    return error
