"""``GET /v1/models`` and ``GET /v1/models/{id}``."""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.keys.keyring import ApiKey
from gateway.errors import ModelNotFound
from gateway.routing.router import Router


def model_routes(router: Router) -> APIRouter:
    api = APIRouter(prefix="/v1", tags=["openai"])
    started_at = int(time.time())

    @api.get("/models")
    async def list_models(request: Request) -> Response:
        key = _api_key(request)
        names = [name for name in router.model_names if key is None or key.may_use(name)]
        data = [model_object(name, "switchyard", started_at) for name in names]
        return json_response({"object": "list", "data": data})

    @api.get("/models/{model_id:path}")
    async def retrieve_model(model_id: str, request: Request) -> Response:
        key = _api_key(request)
        if key is not None and not key.may_use(model_id):
            raise ModelNotFound(model_id)  # as if absent: the list does not show it either
        deployments = router.deployments_for(model_id)  # raises ModelNotFound
        owner = "switchyard" if router.is_public(model_id) else deployments[0].provider_name
        return json_response(model_object(model_id, owner, started_at))

    return api


def _api_key(request: Request) -> ApiKey | None:
    return request.scope.get("state", {}).get("api_key")


def model_object(model_id: str, owned_by: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}


def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")
