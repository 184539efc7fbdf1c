"""``GET`` and ``DELETE /v1/responses/{id}``: the Responses API answers the gateway kept (``store``).

A response is its key's only: another key (or, on an open gateway, anyone
once keys are set) gets 404, as for an id nobody kept. Admin keys see all.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from gateway.conversations import ResponseStore
from gateway.errors import InvalidRequest, ResponseNotFound
from gateway.http.responses import json_response
from gateway.keys.keyring import api_key_of


def response_routes(store: ResponseStore | None) -> APIRouter:
    api = APIRouter(prefix="/v1", tags=["responses"])

    def owner(request: Request) -> str | None:
        key = api_key_of(request.scope)
        return None if key is None else key.name

    # One route for both methods, so that a 405 on the path lists both in Allow.
    @api.api_route("/responses/{response_id}", methods=["GET", "DELETE"])
    async def kept_response(
        request: Request,
        response_id: str,
        stream: Annotated[bool, Query(description="Not served: a kept response is whole.")] = False,
    ) -> Response:
        """GET: a kept response, as its client was answered. DELETE: forget it (no conversation continues from it)."""
        if request.method == "DELETE":
            if store is None or not await store.delete(response_id, owner(request)):
                raise ResponseNotFound(response_id)
            return json_response({"id": response_id, "object": "response", "deleted": True})
        if stream:
            raise InvalidRequest("`stream` is not served on a kept response: it is returned whole.", param="stream")
        found = None if store is None else await store.get(response_id, owner(request))
        if found is None:
            raise ResponseNotFound(response_id)
        return json_response(found.response)

    return api
