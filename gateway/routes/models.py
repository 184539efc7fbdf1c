"""``GET /v1/models`` and ``GET /v1/models/{id}``."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.errors import ModelNotFound
from gateway.http.responses import json_response
from gateway.keys.keyring import api_key_of
from gateway.routing.table import ModelTable


def model_routes(table: ModelTable) -> APIRouter:
    api = APIRouter(prefix="/v1", tags=["openai"])
    started_at = int(time.time())

    @api.get("/models")
    async def list_models(request: Request) -> Response:
        key = api_key_of(request.scope)
        names = [name for name in table.model_names if key is None or key.may_use(name)]
        data = [model_object(name, "switchyard", started_at, table.parent_of(name)) for name in names]
        return json_response({"object": "list", "data": data})

    @api.get("/models/{model_id:path}")
    async def retrieve_model(model_id: str, request: Request) -> Response:
        key = api_key_of(request.scope)
        if key is not None and not key.may_use(model_id):
            raise ModelNotFound(model_id)  # as if absent: the list does not show it either
        deployments = table.deployments_for(model_id)  # raises ModelNotFound
        owner = "switchyard" if table.is_public(model_id) else deployments[0].provider_name
        return json_response(model_object(model_id, owner, started_at, table.parent_of(model_id)))

    return api


def model_object(model_id: str, owned_by: str, created: int, parent: str | None = None) -> dict[str, Any]:
    """OpenAI's model object; a LoRA adapter also names its base model in ``parent``, as vLLM does."""
    model = {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}
    if parent is not None:
        model["parent"] = parent
    return model

