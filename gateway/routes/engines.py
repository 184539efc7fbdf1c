"""vLLM's operational endpoints for the engines in this process: reset the prefix cache, sleep, wake up.

    POST /reset_prefix_cache     forget every cached prefix        409 while requests run
    POST /sleep                  release the KV cache's memory     409 while requests run
    POST /wake_up                take it again and serve
    GET  /is_sleeping            {"is_sleeping": bool}

Each acts on every local chat engine, or on one with ``?provider=NAME``. A
sleeping engine's requests are refused as for a model that is loading (503,
and the router falls back to the model's next deployment); the process stays
ready. They need an admin key, as /v1/usage does: not being under ``/v1/``,
the key is checked here. vLLM serves them only in its development mode and
answers 200 whatever happened; here an answer says what was done.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.errors import InvalidRequest
from gateway.http.responses import json_response
from gateway.keys.admin import require_admin_key
from gateway.keys.keyring import KeyRing
from gateway.routing.table import ModelTable
from providers import OpenAIError
from providers.base import ManagesEngine

BUSY = 409


def engine_routes(table: ModelTable, keys: KeyRing) -> APIRouter:
    engines = APIRouter(tags=["engines"])

    def chosen(request: Request) -> list[ManagesEngine]:
        require_admin_key(keys, request.scope["headers"])
        managed = [engine for engine in table.engines_here() if isinstance(engine, ManagesEngine)]
        name = request.query_params.get("provider")
        if name is not None:
            managed = [engine for engine in managed if engine.name == name]
            if not managed:
                raise InvalidRequest(f"No local chat engine is named '{name}'.", param="provider")
        return managed

    @engines.post("/reset_prefix_cache")
    async def reset_prefix_cache(request: Request) -> Response:
        """Forget every cached prompt prefix (a benchmark's cold start; a prompt format changed)."""
        return await _each(chosen(request), "reset", lambda engine: engine.reset_prefix_cache())

    @engines.post("/sleep")
    async def sleep(request: Request) -> Response:
        """Release the KV cache's memory; the engine refuses requests until /wake_up."""
        return await _each(chosen(request), "sleeping", lambda engine: engine.sleep())

    @engines.post("/wake_up")
    async def wake_up(request: Request) -> Response:
        """Take the KV cache's memory again and serve."""
        done = {}
        for engine in chosen(request):
            await engine.wake_up()
            done[engine.name] = "awake"
        return json_response({"engines": done})

    @engines.get("/is_sleeping")
    async def is_sleeping(request: Request) -> Response:
        """Whether the engines sleep: ``is_sleeping`` is true when every one does (vLLM's one engine's answer)."""
        managed = chosen(request)
        states = {engine.name: engine.sleeping for engine in managed}
        return json_response({"is_sleeping": bool(states) and all(states.values()), "engines": states})

    return engines


async def _each(managed: list[ManagesEngine], done: str, act: Callable[[ManagesEngine], Awaitable[bool]]) -> Response:
    """``act`` on each engine; a 409 naming the engines that had requests running (the others were acted on)."""
    results = {engine.name: await act(engine) for engine in managed}
    busy = [name for name, ok in results.items() if not ok]
    if busy:
        raise OpenAIError(
            f"Requests are running on {', '.join(busy)}: nothing was changed there; try again once they finished.",
            status_code=BUSY, error_type="invalid_request_error", code="engine_busy",
        )  # fmt: skip
    return json_response({"engines": {name: done for name in results}})
