"""What a cached answer is filed under: the request, normalised, hashed, within its team's scope.

Two requests share an exact key when they ask the same model the same
thing the same way: every body field counts but those that cannot change
the answer (``IGNORED``: who asks, whether it streams, routing fields).
Unknown fields count, so a provider's own sampling knob is never ignored.
A semantic key (``scope``) leaves out the last user message too: the
answers of one conversation so far, searched by what that message means.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

# Body fields that do not change what the model answers.
IGNORED = frozenset({
    "model",  # the public name is hashed on its own
    "user", "safety_identifier", "metadata", "store", "service_tier", "prompt_cache_key", "prompt_cache_retention",
    "stream", "stream_options",  # a cached answer is replayed either way
    "cache", "fallbacks", "disable_fallbacks", "stream_resume",  # the gateway's own
})  # fmt: skip


@dataclass(frozen=True, slots=True)
class CacheKeys:
    """A request's exact key, and for semantic mode its scope and the text to embed (None: not searchable)."""

    exact: str
    scope: str | None
    text: str | None


def deterministic(payload: dict[str, Any]) -> bool:
    """Whether the request asks for one answer: temperature 0, or a seed (OpenAI's default temperature is 1)."""
    return payload.get("temperature") == 0 or payload.get("seed") is not None


def cache_keys(owner: str, model: str, payload: dict[str, Any]) -> CacheKeys:
    """The keys of ``payload`` for ``model`` in ``owner``'s scope (a team, a key, or everyone on an open gateway)."""
    request = {name: _number(value) for name, value in payload.items() if name not in IGNORED}
    if isinstance(request.get("messages"), list):
        request["messages"] = [_text_parts_joined(message) for message in request["messages"]]
    exact = _digest(owner, model, request)
    messages = request.get("messages")
    text = _last_user_text(messages)
    if text is None:
        return CacheKeys(exact, None, None)
    before = {**request, "messages": messages[:-1]}
    return CacheKeys(exact, _digest(owner, model, before), text)


def _number(value: Any) -> Any:
    """``0.0`` as ``0``: one JSON number however a client spells it (LangChain sends 0.0, the openai SDK 0)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _text_parts_joined(message: Any) -> Any:
    """A message whose content is text parts only, as the same message with one string (OpenAI reads them alike)."""
    if not isinstance(message, dict) or not isinstance(content := message.get("content"), list):
        return message
    if not content or not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                              for p in content):  # fmt: skip
        return message
    return {**message, "content": "".join(part["text"] for part in content)}


def _digest(owner: str, model: str, request: dict[str, Any]) -> str:
    canonical = orjson.dumps([owner, model, request], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def _last_user_text(messages: Any) -> str | None:
    """The text of the last message when it is the user's (text parts joined); None otherwise."""
    if not isinstance(messages, list) or not messages or not isinstance(last := messages[-1], dict):
        return None
    if last.get("role") != "user":
        return None
    content = last.get("content")
    if isinstance(content, str):
        return content or None
    return None  # an image or audio part (text parts are joined by now): only the exact key can match it
