"""Webhooks: events about requests, signed as Standard Webhooks asks, sent off the request path (docs/webhooks.md)."""

from gateway.webhooks.events import (
    EVENT_TYPES,
    NOT_EMITTED,
    BudgetExceeded,
    Content,
    Event,
    EventType,
    RequestFinished,
)
from gateway.webhooks.sender import WebhookSender, WebhookTarget
from gateway.webhooks.signing import secret_key, signature

__all__ = [
    "EVENT_TYPES", "NOT_EMITTED", "BudgetExceeded", "Content", "Event", "EventType", "RequestFinished",
    "WebhookSender", "WebhookTarget", "secret_key", "signature",
]  # fmt: skip
