"""OpenAI's Responses API as a door onto chat completions: requests in, Response objects out.

Pure functions, no I/O (the stored responses are read and written by
``responses_door.py``). A Responses request becomes the chat payload the
router takes as ``Endpoint.CHAT``; the chat answer comes back as a Response
object (the stream's events: ``openai_responses_stream``)::

    Responses request                       chat completions payload
    instructions                            a first system message (never carried from a previous response)
    input: a string                         one user message
    input: message items                    messages; developer as system; input_text / output_text parts as
                                            text, input_image as image_url
    input: function_call items              an assistant message's tool_calls (consecutive calls: one message)
    input: function_call_output items       role tool messages
    previous_response_id                    the stored conversation and its output, before this input
    max_output_tokens                       max_tokens
    temperature, top_p, user,               as they are
      parallel_tool_calls, top_logprobs
    tools (type function)                   tools[].function
    tool_choice                             auto / none / required / a named function
    text.format (json_schema, json_object)  response_format
    reasoning.effort                        reasoning_effort
    include message.output_text.logprobs    logprobs: true
    stream                                  stream, with include_usage

A deployment that speaks the Responses API (the ``openai`` preset) gets the
request untranslated. Hosted tools (web_search, file_search,
code_interpreter, ...) run at OpenAI only: sent to any other deployment
they are, like every field chat has no place for, a 400 naming them, or
left out and named when the model's ``unsupported_params`` is ``drop``. ``store``, ``metadata`` and ``previous_response_id`` are the
gateway's own: it keeps the responses. ``prompt_cache_key``,
``safety_identifier`` and ``include: reasoning.encrypted_content`` are
hints that change no answer here and are left out without a word.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.conversations import StoredResponse
from gateway.errors import InvalidRequest
from gateway.http.doors.translation import Losses, Translated, string_field
from gateway.routing.fallbacks import ROUTING_FIELDS
from gateway.routing.router import NativeForm
from providers.errors import UpstreamProtocolError
from providers.wire import Door

Refuse = Callable[..., None]

# Fields chat completions has under the same name, sent as they are.
SAME_FIELDS = ("temperature", "top_p", "user", "service_tier", "safety_identifier", "prompt_cache_key",
               "prompt_cache_retention", "prompt_cache_options")  # fmt: skip
# The request fields translated, or kept by the gateway itself (store, metadata, previous_response_id).
TRANSLATED_FIELDS = frozenset({
    "model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "user", "parallel_tool_calls",
    "top_logprobs", "tools", "tool_choice", "text", "reasoning", "include", "stream", "store", "metadata",
    "previous_response_id", *SAME_FIELDS,
})  # fmt: skip
# ``stream_options`` only asks for obfuscation padding, which changes no answer.
IGNORED_FIELDS = frozenset({"stream_options"})
# At these values a field asks for nothing chat completions would not do anyway.
_DEFAULTS: dict[str, Any] = {"background": False, "truncation": "disabled"}
# State OpenAI keeps (a conversation, a stored prompt): without it the request means something else.
_HELD_ELSEWHERE = frozenset({"conversation", "prompt"})
LOGPROBS = "message.output_text.logprobs"
_IGNORED_INCLUDES = frozenset({"reasoning.encrypted_content"})  # a translated answer has no reasoning items
_HOSTED_TOOL = "is a tool OpenAI runs itself, passed on only to a deployment that speaks the Responses API"
_ELSEWHERE = "refers to what OpenAI keeps for a deployment that speaks the Responses API"


class ResponsesRequest(BaseModel):
    """``POST /v1/responses``: the fields the gateway checks (the rest: see the module's docstring)."""

    # strict: "max_output_tokens": "10" is an error, not a coercion.
    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream: bool | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    include: list[str] | None = None
    user: str | None = None


@dataclass(frozen=True, slots=True)
class Conversation:
    """What a Response answer needs beyond the request: its id, when it began, and the items it answers."""

    id: str
    created_at: int
    items: list[dict[str, Any]]  # the earlier responses' input and output, then this request's input
    logprobs: bool  # the client asked for message.output_text.logprobs


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def responses_to_chat(request: dict[str, Any], previous: StoredResponse | None) -> Translated:
    """A checked Responses request (``ResponsesRequest``), continuing ``previous`` if given, as a chat payload."""
    refuse = Losses()
    for name, value in request.items():
        if name in TRANSLATED_FIELDS or name in IGNORED_FIELDS or name in ROUTING_FIELDS or value is None:
            continue
        if name in _HELD_ELSEWHERE:
            refuse(name, _ELSEWHERE, droppable=False)
        elif _DEFAULTS.get(name, ...) != value:
            refuse(name)
    items = _input_items(request["input"])
    if previous is not None:
        items = [*previous.conversation, *previous.response.get("output", ()), *items]
    messages: list[dict[str, Any]] = []
    if request.get("instructions"):
        messages.append({"role": "system", "content": request["instructions"]})
    messages += chat_messages(items, refuse)
    payload: dict[str, Any] = {"model": request["model"], "messages": messages}
    payload.update({name: request[name] for name in ROUTING_FIELDS if name in request})
    for name in SAME_FIELDS:
        if request.get(name) is not None:
            payload[name] = request[name]
    if request.get("max_output_tokens") is not None:
        payload["max_tokens"] = request["max_output_tokens"]
    logprobs = _includes(request, refuse)
    if logprobs:
        payload["logprobs"] = True
        if request.get("top_logprobs"):
            payload["top_logprobs"] = request["top_logprobs"]
    payload.update(_tool_fields(request, refuse))
    payload.update(_text_fields(request.get("text"), refuse))
    reasoning = request.get("reasoning") or {}
    for name, value in reasoning.items():
        if name == "effort" and isinstance(value, str):
            payload["reasoning_effort"] = value
        elif value is not None:
            refuse(f"reasoning.{name}")
    if request.get("stream") is True:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}  # response.completed carries the usage
    conversation = Conversation(new_id("resp"), int(time.time()), items, logprobs)
    return Translated(payload, request, NativeForm(Door.RESPONSES, _native(request, items), tuple(refuse.lost)), conversation)


def _native(request: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
    """The request for a deployment that speaks Responses: the gateway's kept conversation in place of the id."""
    if request.get("previous_response_id") is None:
        return request
    return {**{k: v for k, v in request.items() if k != "previous_response_id"}, "input": items}


def _input_items(value: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "message", "role": "user", "content": value}] if isinstance(value, str) else list(value)


def chat_messages(items: list[dict[str, Any]], refuse: Refuse) -> list[dict[str, Any]]:
    """Responses input items as chat messages."""
    messages: list[dict[str, Any]] = []
    for position, item in enumerate(items):
        where = f"input[{position}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"Invalid value for '{where}': an input item object.", param=where)
        kind = item.get("type", "message")
        if kind == "message":
            message = _message(item, where, refuse)
            if message is not None:
                messages.append(message)
        elif kind == "function_call":
            call = {
                "id": string_field(item, "call_id", where),
                "type": "function",
                "function": {"name": string_field(item, "name", where), "arguments": string_field(item, "arguments", where)},
            }  # fmt: skip
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and not _follows_tool_results(messages):
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            content = output if isinstance(output, str) else _joined_text(output, f"{where}.output", refuse)
            messages.append({"role": "tool", "tool_call_id": string_field(item, "call_id", where), "content": content})
        elif kind == "item_reference":
            refuse(where, _ELSEWHERE, droppable=False)  # the item it names would be missing
        else:
            refuse(where, f"is a `{kind}` item, which has no equivalent in chat completions")
    return messages


def _follows_tool_results(messages: list[dict[str, Any]]) -> bool:
    return bool(messages) and messages[-1]["role"] == "tool"


_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}


def _message(item: dict[str, Any], where: str, refuse: Refuse) -> dict[str, Any] | None:
    """A message item as a chat message; None when every part of it was left out."""
    role = _ROLES.get(item.get("role"))  # type: ignore[arg-type]
    if role is None:
        raise InvalidRequest(
            f"Invalid value for '{where}.role': one of user, assistant, system or developer.", param=f"{where}.role"
        )
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise InvalidRequest(f"Invalid value for '{where}.content': a string or content parts.", param=f"{where}.content")
    if role != "user":
        return {"role": role, "content": _joined_text(content, f"{where}.content", refuse)}
    parts: list[dict[str, Any]] = []
    for position, part in enumerate(content):
        at = f"{where}.content[{position}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "input_text":
            parts.append({"type": "text", "text": string_field(part, "text", at)})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image: dict[str, Any] = {"url": part["image_url"]}
            if part.get("detail") in ("low", "high", "auto"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            refuse(at)  # a file, audio, an image by file_id
    if not parts:
        return None  # chat takes no empty content
    if len(parts) == 1 and parts[0]["type"] == "text":
        return {"role": role, "content": parts[0]["text"]}
    return {"role": role, "content": parts}


def _joined_text(parts: Any, where: str, refuse: Refuse) -> str:
    """Text parts (input_text, output_text) as one text; a refusal's text too; anything else is refused."""
    if not isinstance(parts, list):
        raise InvalidRequest(f"Invalid value for '{where}': a string or content parts.", param=where)
    texts = []
    for position, part in enumerate(parts):
        at = f"{where}[{position}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text"):
            texts.append(string_field(part, "text", at))
        elif kind == "refusal":
            texts.append(string_field(part, "refusal", at))
        else:
            refuse(at)
    return "".join(texts)


def _includes(request: dict[str, Any], refuse: Refuse) -> bool:
    """Whether ``include`` asks for logprobs; what else it asks for is refused, or ignored when there is none."""
    logprobs = False
    for position, name in enumerate(request.get("include") or ()):
        if name == LOGPROBS:
            logprobs = True
        elif name not in _IGNORED_INCLUDES:
            refuse(f"include[{position}]")
    return logprobs


def _tool_fields(request: dict[str, Any], refuse: Refuse) -> dict[str, Any]:
    """Function ``tools`` and ``tool_choice`` as chat's; a hosted tool is refused."""
    tools = []
    for position, tool in enumerate(request.get("tools") or ()):
        where = f"tools[{position}]"
        if tool.get("type") != "function":
            refuse(where, f"(`{tool.get('type')}`) {_HOSTED_TOOL}")
            continue
        function: dict[str, Any] = {"name": string_field(tool, "name", where)}
        for name in ("description", "parameters", "strict"):
            if tool.get(name) is not None:
                function[name] = tool[name]
        tools.append({"type": "function", "function": function})
    fields: dict[str, Any] = {"tools": tools} if tools else {}
    if tools and request.get("parallel_tool_calls") is not None:
        fields["parallel_tool_calls"] = request["parallel_tool_calls"]
    choice = request.get("tool_choice")
    if choice is None or not tools:
        return fields
    if choice in ("auto", "none", "required"):
        fields["tool_choice"] = choice
    elif isinstance(choice, dict) and choice.get("type") == "function":
        fields["tool_choice"] = {"type": "function", "function": {"name": string_field(choice, "name", "tool_choice")}}
    else:
        refuse("tool_choice")
    return fields


def _text_fields(text: dict[str, Any] | None, refuse: Refuse) -> dict[str, Any]:
    """``text.format`` as chat's ``response_format``."""
    fields: dict[str, Any] = {}
    for name, value in (text or {}).items():
        if name == "verbosity" and value is not None:
            fields["verbosity"] = value  # chat's top-level field
        elif name != "format" and value is not None:
            refuse(f"text.{name}")
    form = (text or {}).get("format")
    if form is None:
        return fields
    kind = form.get("type") if isinstance(form, dict) else None
    if kind == "json_object":
        fields["response_format"] = {"type": "json_object"}
    elif kind == "json_schema":
        schema = {"name": string_field(form, "name", "text.format"), "schema": form.get("schema")}
        if not isinstance(schema["schema"], dict):
            raise InvalidRequest("Missing required parameter: 'text.format.schema'.", param="text.format.schema")
        for name in ("description", "strict"):
            if form.get(name) is not None:
                schema[name] = form[name]
        fields["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif kind != "text":
        raise InvalidRequest(
            "Invalid value for 'text.format.type': one of text, json_object or json_schema.", param="text.format.type"
        )
    return fields


# --- answers -----------------------------------------------------------------------------------------------

Status = Literal["completed", "incomplete", "in_progress", "failed"]
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def response_object(
    translated: Translated,
    status: Status,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    *,
    incomplete: str | None = None,
    error: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The Response object for the request ``translated`` read, in the state given."""
    request, conversation = translated.request, translated.state
    text = request.get("text") or {}
    reasoning = request.get("reasoning")
    response = {
        "id": conversation.id,
        "object": "response",
        "created_at": conversation.created_at,
        "status": status,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "model": request["model"],
        "output": output,
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": request.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": None} if reasoning else None,
        "store": request.get("store", True),
        "temperature": request.get("temperature", 1.0),
        "text": {"format": text.get("format") or {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": [_echoed(tool) for tool in request.get("tools") or ()],
        "top_p": request.get("top_p", 1.0),
        "truncation": "disabled",
        "metadata": request.get("metadata") or {},
    }
    # The spec has no null for these two (OpenAI's examples send null): left out until there is a value.
    if usage is not None:
        response["usage"] = usage
    if request.get("user") is not None:
        response["user"] = request["user"]
    return response


def _echoed(tool: dict[str, Any]) -> dict[str, Any]:
    """A request's tool as a Response lists it: a function's ``strict`` and ``parameters`` always there."""
    if tool.get("type") != "function":
        return tool
    return {**tool, "strict": tool.get("strict"), "parameters": tool.get("parameters")}


def chat_to_response(answer: dict[str, Any], translated: Translated, counted: Any) -> dict[str, Any]:
    """A chat completion as the Response object; ``counted``: the gateway's Usage, when the answer has none."""
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamProtocolError("the upstream's chat answer has no choices")
    choice = choices[0]
    message = choice.get("message") or {}
    status, incomplete = finished(choice.get("finish_reason"))
    output: list[dict[str, Any]] = []
    if isinstance(message.get("content"), str) and message["content"]:
        logprobs = output_logprobs(choice.get("logprobs")) if translated.state.logprobs else []
        output.append(message_item(new_id("msg"), message["content"], status, logprobs))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        output.append(function_call_item(new_id("fc"), call.get("id") or new_id("call"), function, status))
    return response_object(translated, status, output, responses_usage(answer.get("usage"), counted), incomplete=incomplete)


def finished(finish_reason: Any) -> tuple[Status, str | None]:
    """(status, incomplete reason) for a chat finish_reason: a response's, and so its items'."""
    incomplete = _INCOMPLETE.get(finish_reason)
    return ("incomplete" if incomplete else "completed"), incomplete


def message_item(item_id: str, text: str, status: str, logprobs: list[dict[str, Any]]) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": [part]}


def function_call_item(item_id: str, call_id: str, function: dict[str, Any], status: str) -> dict[str, Any]:
    arguments = function.get("arguments")
    return {
        "id": item_id, "type": "function_call", "status": status, "call_id": call_id,
        "name": function.get("name") or "", "arguments": arguments if isinstance(arguments, str) else "",
    }  # fmt: skip


def output_logprobs(logprobs: Any) -> list[dict[str, Any]]:
    """A chat choice's ``logprobs.content`` as output_text logprobs (the same fields, top_logprobs included)."""
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    out = []
    for entry in content or ():
        if not isinstance(entry, dict):
            continue
        top = [
            {"token": t.get("token", ""), "logprob": t.get("logprob", 0.0), "bytes": t.get("bytes") or []}
            for t in entry.get("top_logprobs") or () if isinstance(t, dict)
        ]  # fmt: skip
        out.append({"token": entry.get("token", ""), "logprob": entry.get("logprob", 0.0),
                    "bytes": entry.get("bytes") or [], "top_logprobs": top})  # fmt: skip
    return out


def responses_usage(reported: Any, counted: Any) -> dict[str, Any]:
    """Chat usage in Responses terms (``counted``: the gateway's Usage, for an answer that reported none)."""
    if isinstance(reported, dict) and isinstance(reported.get("prompt_tokens"), int):
        prompt, completion = reported["prompt_tokens"], reported.get("completion_tokens") or 0
        cached = (reported.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        reasoning = (reported.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    else:
        prompt = counted.prompt_tokens if counted is not None else 0
        completion = counted.completion_tokens if counted is not None else 0
        cached = reasoning = 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + completion,
    }


def stored(translated: Translated, response: dict[str, Any], owner: str | None) -> StoredResponse:
    """What the gateway keeps of an answered request, for ``previous_response_id`` and ``GET``."""
    return StoredResponse(response["id"], owner, response, translated.state.items, time.time())


def error_of(error: Any) -> dict[str, str]:
    """A Response's ``error`` for a failure: ``server_error`` or ``rate_limit_exceeded``, as the spec's codes go."""
    code = "rate_limit_exceeded" if getattr(error, "status_code", None) == 429 else "server_error"
    return {"code": code, "message": getattr(error, "message", "The response could not be completed.")}

