"""A batch's input file read and checked: one request per JSONL line, as OpenAI's Batch API takes them.

Each line is ``{"custom_id", "method": "POST", "url", "body"}``: ``custom_id``
unique in the file, ``url`` the batch's endpoint, ``body`` an object naming
its ``model``. Lines may name different models (OpenAI asks for one per
batch; the gateway routes each line on its own). A line that breaks a rule
refuses the whole batch, with a 400 naming the line (counted from 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import InvalidBatchInput

# The endpoints a batch may target: the relay's doors that answer a whole JSON body (/v1/messages: Anthropic's
# Message Batches, gateway/routes/message_batches.py).
BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/moderations", "/v1/responses",
                   "/v1/messages")
# OpenAI's limit on requests per batch.
MAX_LINES = 50_000
MAX_CUSTOM_ID_CHARS = 512


@dataclass(frozen=True, slots=True)
class BatchLine:
    index: int  # from 0
    custom_id: str
    body: dict[str, Any]


def read_lines(content: bytes, endpoint: str) -> list[BatchLine]:
    """The requests of an input file for ``endpoint``, or InvalidBatchInput naming the first bad line."""
    lines: list[BatchLine] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        if len(lines) == MAX_LINES:
            raise InvalidBatchInput(None, f"it has more than {MAX_LINES} requests, the most a batch takes.")
        line = _line(number, raw, endpoint)
        if line["custom_id"] in seen:
            raise InvalidBatchInput(number, f"custom_id '{line['custom_id']}' is used by line {seen[line['custom_id']]} too; each must be unique.")
        seen[line["custom_id"]] = number
        lines.append(BatchLine(len(lines), line["custom_id"], line["body"]))
    if not lines:
        raise InvalidBatchInput(None, "it holds no request.")
    return lines


def _line(number: int, raw: bytes, endpoint: str) -> dict[str, Any]:
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidBatchInput(number, "it is not JSON.") from None
    if not isinstance(line, dict):
        raise InvalidBatchInput(number, "it is not a JSON object.")
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not 0 < len(custom_id) <= MAX_CUSTOM_ID_CHARS:
        raise InvalidBatchInput(number, f"`custom_id` must be a string of 1 to {MAX_CUSTOM_ID_CHARS} characters.")
    if line.get("method") != "POST":
        raise InvalidBatchInput(number, "`method` must be POST.")
    if line.get("url") != endpoint:
        raise InvalidBatchInput(number, f"`url` is {str(line.get('url'))[:80]!r}; every line must be for the batch's endpoint {endpoint}.")
    body = line.get("body")
    if not isinstance(body, dict):
        raise InvalidBatchInput(number, "`body` must be a JSON object.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidBatchInput(number, "`body.model` must name a model.")
    if body.get("stream") is True:
        raise InvalidBatchInput(number, "`body.stream` is true; a batch line is answered whole.")
    return line
