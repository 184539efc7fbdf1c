"""``GET`` and ``DELETE /v1/responses/{id}``, ``GET /v1/responses/{id}/input_items``: the Responses answers kept.

A response is its key's only: another key gets 404, as for an id nobody
kept; admin keys see all. The Responses API's other URLs (``cancel``,
``input_tokens``, ``compact``) answer 404 ``unsupported_endpoint``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from gateway.conversations import ResponseStore, StoredResponse
from gateway.errors import EndpointNotSupported, InvalidRequest, ResponseNotFound
from gateway.http.responses import json_response
from gateway.keys.keyring import api_key_of

# An input item's id prefix by type, for the items a client sent without one.
_ID_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}


def response_routes(store: ResponseStore | None) -> APIRouter:
    api = APIRouter(prefix="/v1", tags=["responses"])

    async def kept(request: Request, response_id: str) -> StoredResponse:
        key = api_key_of(request.scope)
        found = None if store is None else await store.get(response_id, None if key is None else key.name)
        if found is None:
            raise ResponseNotFound(response_id)
        return found

    @api.get("/responses/{response_id}")
    async def retrieve_response(
        request: Request,
        response_id: str,
        stream: Annotated[bool, Query(description="Not served: a kept response is whole.")] = False,
    ) -> Response:
        """A kept response, as its client was answered."""
        if stream:
            raise InvalidRequest("`stream` is not served on a kept response: it is returned whole.", param="stream")
        return json_response((await kept(request, response_id)).response)

    @api.delete("/responses/{response_id}")
    async def delete_response(request: Request, response_id: str) -> Response:
        """Forget a kept response (no conversation continues from it)."""
        key = api_key_of(request.scope)
        if store is None or not await store.delete(response_id, None if key is None else key.name):
            raise ResponseNotFound(response_id)
        return json_response({"id": response_id, "object": "response", "deleted": True})

    @api.get("/responses/{response_id}/input_items")
    async def list_input_items(
        request: Request,
        response_id: str,
        limit: Annotated[int, Query(ge=1, le=100, description="Items per page.")] = 20,
        order: Annotated[Literal["asc", "desc"], Query(description="By position in the conversation.")] = "desc",
        after: Annotated[str | None, Query(description="The id of the item the page starts after.")] = None,
    ) -> Response:
        """The input items that led to a kept response (those of the responses it continued included)."""
        found = await kept(request, response_id)
        items = [_listed(item, f"{response_id}_{position}") for position, item in enumerate(found.conversation)]
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [item.get("id") for item in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        page = items[:limit]
        return json_response({
            "object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit,
        })  # fmt: skip

    @api.post("/responses/{response_id}/cancel", include_in_schema=False)
    @api.post("/responses/input_tokens", include_in_schema=False)
    @api.post("/responses/compact", include_in_schema=False)
    async def not_served(request: Request) -> Response:
        raise EndpointNotSupported(request.method, request.url.path)

    return api


def _listed(item: dict[str, Any], position_id: str) -> dict[str, Any]:
    """An input item as the input_items list shows it: with an id and a status; a message's text as a part."""
    kind = item.get("type", "message")
    listed = {"type": kind, **item, "status": item.get("status", "completed")}
    listed.setdefault("id", f"{_ID_PREFIXES.get(kind, 'item')}_{position_id.removeprefix('resp_')}")
    if kind == "message" and isinstance(item.get("content"), str):
        part = "output_text" if item.get("role") == "assistant" else "input_text"
        listed["content"] = [{"type": part, "text": item["content"], **({"annotations": []} if part == "output_text" else {})}]
    return listed
