"""What a webhook tells: an event's type and its data, and the JSON body sent for it.

A body is ``{"type", "timestamp", "data"}`` as Standard Webhooks suggests.
Prompt and answer text (``Content``) go only to an endpoint configured
with ``include_content``; every other endpoint gets the same body without
the ``content`` field.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, get_args

import orjson

EventType = Literal["request.completed", "request.failed", "batch.completed", "budget.exceeded"]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
# Types accepted in config but never sent: none since batch.completed is sent when a batch ends.
NOT_EMITTED: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Content:
    """The text of a request: its messages (or prompt, or input) and the answer's text, where known."""

    prompt: Any = None  # the request's messages, prompt or input, as the client sent them
    answer: str | None = None


@dataclass(frozen=True, slots=True)
class RequestFinished:
    """The data of request.completed (status below 400) and request.failed."""

    request_id: str
    endpoint: str
    model: str
    provider: str | None
    deployment: str | None
    status: int
    key: str | None
    stream: bool
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    estimated: bool
    cost_usd: float | None  # None: something was used at no known price
    latency_ms: float
    cache: str | None
    content: Content | None = None


@dataclass(frozen=True, slots=True)
class BudgetExceeded:
    """The data of budget.exceeded: a request refused because a key's budget is spent."""

    request_id: str | None
    key: str
    model: str
    budget: str  # which one: "token budget of 1000 tokens", "daily budget of $5.00 of key 'a'", ...
    resets_at: str | None  # ISO 8601; None for a budget that never resets


@dataclass(frozen=True, slots=True)
class BatchFinished:
    """The data of batch.completed: a batch ended, whichever way (``status`` says which)."""

    batch_id: str
    status: str  # completed, failed, cancelled or expired
    key: str | None
    endpoint: str
    total: int
    completed: int  # lines answered 2xx
    failed: int  # lines answered with an error (in the error file)
    output_file_id: str | None
    error_file_id: str | None


EventData = RequestFinished | BudgetExceeded | BatchFinished


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    data: EventData
    # Events with the same order key reach each endpoint in the order they were emitted.
    order_key: str
    time: float = field(default_factory=time.time)
    id: str = field(default_factory=lambda: f"msg_{uuid.uuid4().hex}")

    def body(self, include_content: bool) -> bytes:
        data = {f.name: getattr(self.data, f.name) for f in dataclasses.fields(self.data)}
        content = data.pop("content", None)
        if include_content and content is not None:
            data["content"] = dataclasses.asdict(content)
        stamp = datetime.fromtimestamp(self.time, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return orjson.dumps({"type": self.type, "timestamp": stamp, "data": data})
