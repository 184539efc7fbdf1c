"""Stored Responses API answers: what ``store: true`` keeps and ``previous_response_id`` continues from."""

from gateway.conversations.store import (
    ResponseStore,
    StoredResponse,
    open_response_store,
)

__all__ = ["ResponseStore", "StoredResponse", "open_response_store"]
