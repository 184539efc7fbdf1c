"""The OpenAI-compatible endpoints under ``/v1``."""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from providers import Endpoint

from .router import Deployment, Router
from .streaming import EventStreamResponse
from .validation import REQUEST_MODELS, parse_body

STREAMABLE = frozenset({Endpoint.CHAT, Endpoint.COMPLETIONS})


def api_routes(router: Router) -> APIRouter:
    api = APIRouter(prefix="/v1")
    started_at = int(time.time())

    async def relay(request: Request, endpoint: Endpoint) -> Response:
        payload = parse_body(await request.body(), endpoint)
        request_id = request.scope["state"]["request_id"]
        if payload.get("stream") is True and endpoint in STREAMABLE:
            stream = await router.open_stream(endpoint, payload, request_id)
            return EventStreamResponse(stream.answer, deployment_headers(stream.deployment))
        routed = await router.send(endpoint, payload, request_id)
        return Response(
            routed.answer.body,
            status_code=routed.answer.status,
            media_type="application/json",
            headers=deployment_headers(routed.deployment),
        )

    @api.post("/chat/completions", openapi_extra=request_body_doc(Endpoint.CHAT), tags=["openai"])
    async def create_chat_completion(request: Request) -> Response:
        return await relay(request, Endpoint.CHAT)

    @api.post("/completions", openapi_extra=request_body_doc(Endpoint.COMPLETIONS), tags=["openai"])
    async def create_completion(request: Request) -> Response:
        return await relay(request, Endpoint.COMPLETIONS)

    @api.post("/embeddings", openapi_extra=request_body_doc(Endpoint.EMBEDDINGS), tags=["openai"])
    async def create_embedding(request: Request) -> Response:
        return await relay(request, Endpoint.EMBEDDINGS)

    @api.get("/models", tags=["openai"])
    async def list_models() -> Response:
        data = [model_object(name, "switchyard", started_at) for name in router.model_names]
        return json_response({"object": "list", "data": data})

    @api.get("/models/{model_id:path}", tags=["openai"])
    async def retrieve_model(model_id: str) -> Response:
        deployments = router.deployments_for(model_id)  # raises ModelNotFound
        owner = "switchyard" if model_id in router.model_names else deployments[0].provider_name
        return json_response(model_object(model_id, owner, started_at))

    return api


def deployment_headers(deployment: Deployment) -> dict[str, str]:
    return {"x-switchyard-provider": deployment.provider_name, "x-switchyard-model": deployment.model}


def model_object(model_id: str, owned_by: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}


def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")


def request_body_doc(endpoint: Endpoint) -> dict[str, Any]:
    """The request body's schema for ``/docs``; bodies are read raw, not by FastAPI."""
    name = REQUEST_MODELS[endpoint].__name__
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
        }
    }
