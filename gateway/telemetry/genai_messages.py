"""Chat messages in the GenAI conventions' shape, for ``record_content`` spans.

The conventions' ``gen_ai.input.messages`` and ``gen_ai.output.messages`` are
lists of ``{role, parts: [...]}`` (outputs add ``finish_reason``), each part
a ``text``, a ``tool_call`` request, a ``tool_call_response``, or any other
``type`` with its fields as they came (an image, an audio clip).
"""

from __future__ import annotations

from typing import Any

import orjson

# OpenAI's finish reasons as the conventions spell them.
FINISH_REASONS = {"tool_calls": "tool_call", "function_call": "tool_call"}


def input_messages(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """A chat request's messages (or a completion's prompt) as the conventions' input messages."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        return [_message(message) for message in messages if isinstance(message, dict)]
    prompt = payload.get("prompt")
    prompts = prompt if isinstance(prompt, list) else [prompt]
    return [{"role": "user", "parts": [_text(text)]} for text in prompts if isinstance(text, str)]


def output_messages(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """An answer's choices as the conventions' output messages."""
    outputs = []
    for choice in answer.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if isinstance(message, dict):
            output = _message(message)
        else:  # a completion's text
            output = {"role": "assistant", "parts": [_text(choice.get("text") or "")]}
        reason = choice.get("finish_reason")
        output["finish_reason"] = FINISH_REASONS.get(reason, reason) if isinstance(reason, str) else "error"
        outputs.append(output)
    return outputs


def _message(message: dict[str, Any]) -> dict[str, Any]:
    role = message.get("role")
    content = message.get("content")
    if role == "tool":
        response = {"type": "tool_call_response", "id": message.get("tool_call_id"), "response": content}
        return {"role": "tool", "parts": [response]}
    parts: list[dict[str, Any]] = []
    if isinstance(content, str):
        parts.append(_text(content))
    elif isinstance(content, list):
        parts.extend(_part(part) for part in content if isinstance(part, dict))
    for call in message.get("tool_calls") or ():
        if not isinstance(call, dict):
            continue
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        parts.append({"type": "tool_call", "id": call.get("id"), "name": function.get("name"),
                      "arguments": _arguments(function.get("arguments"))})  # fmt: skip
    return {"role": role, "parts": parts}


def _part(part: dict[str, Any]) -> dict[str, Any]:
    if part.get("type") == "text":
        return _text(part.get("text", ""))
    return dict(part)  # another kind (image_url, input_audio, file) as it came: the conventions' generic part


def _text(text: Any) -> dict[str, Any]:
    return {"type": "text", "content": text}


def _arguments(arguments: Any) -> Any:
    """A call's arguments as JSON when they parse, else the text the model wrote."""
    if not isinstance(arguments, str):
        return arguments
    try:
        return orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments
