"""vLLM's operational endpoints for the engines in this process: prefix cache, sleep, wake up, LoRA adapters.

    POST /reset_prefix_cache         forget every cached prefix        409 while requests run
    POST /sleep                      release the KV cache's memory     409 while requests run
    POST /wake_up                    take it again and serve
    GET  /is_sleeping                {"is_sleeping": bool}
    POST /v1/load_lora_adapter       {"lora_name", "lora_path"}: a PEFT adapter served as model lora_name
    POST /v1/unload_lora_adapter     {"lora_name"}                     409 while its requests run

The first four act on every local chat engine, or on one with ``?provider=NAME``. A
sleeping engine's requests are refused as for a model that is loading (503,
and the router falls back to the model's next deployment); the process stays
ready. They need an admin key, as /v1/usage does: not being under ``/v1/``,
the key is checked here. vLLM serves them only in its development mode and
answers 200 whatever happened; here an answer says what was done.

A LoRA adapter goes to the one local chat engine, or to the one ``?provider=``
names when there are several. It becomes a model in the table (``parent``: the
first configured model the engine serves), routed like any other; the answers
are vLLM's plain-text ones. Unloading waits for nothing: while the adapter's
requests run it is a 409 ``engine_busy`` and the adapter stays, as /sleep does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import PlainTextResponse, Response

from gateway.errors import InvalidRequest
from gateway.http.relay import read_body
from gateway.http.responses import json_response
from gateway.http.validation import BodyLimits, Checked, parse_model
from gateway.keys.admin import require_admin_key
from gateway.keys.keyring import KeyRing
from gateway.routing.deployment import Deployment
from gateway.routing.table import ModelTable
from providers import OpenAIError
from providers.base import ManagesEngine, ServesLoraAdapters

BUSY = 409
E = TypeVar("E")
# An adapter's request is two short strings: nothing legitimate comes near these limits.
_LORA_BODY_LIMITS = BodyLimits(max_bytes=1 << 16, max_depth=2, max_model_chars=256)


class LoadLoraAdapterRequest(BaseModel):
    """vLLM's body for POST /v1/load_lora_adapter."""

    model_config = ConfigDict(extra="forbid", strict=True)

    lora_name: str = Field(min_length=1, max_length=256, description="The model name the adapter is served as.")
    lora_path: str = Field(min_length=1, description="A PEFT adapter directory on the gateway's machine.")


class UnloadLoraAdapterRequest(BaseModel):
    """vLLM's body for POST /v1/unload_lora_adapter."""

    model_config = ConfigDict(extra="forbid", strict=True)

    lora_name: str = Field(min_length=1, max_length=256)


# vLLM's wake_up tags: what to take back. The weights never leave here (sleep level 1 frees the KV cache only).
WAKE_TAGS = frozenset({"weights", "kv_cache"})


def engine_routes(table: ModelTable, keys: KeyRing) -> APIRouter:
    engines = APIRouter(tags=["engines"])

    def chosen(request: Request) -> list[ManagesEngine]:
        return _engines(request, keys, table, ManagesEngine)

    @engines.post("/reset_prefix_cache")
    async def reset_prefix_cache(request: Request) -> Response:
        """Forget every cached prompt prefix (a benchmark's cold start; a prompt format changed)."""
        return await _each(chosen(request), "reset", lambda engine: engine.reset_prefix_cache())

    @engines.post("/sleep")
    async def sleep(
        request: Request, level: Annotated[int, Query(description="vLLM's sleep level: 1 (level 2 is not built).")] = 1
    ) -> Response:
        """Release the KV cache's memory; the engine refuses requests until /wake_up."""
        targets = chosen(request)  # the admin key first
        if level != 1:  # vLLM's level 2 discards the weights too, to load them again at wake-up: not built
            raise InvalidRequest(f"Sleep level {level} is not served: level 1 frees the KV cache; level 2 (the "
                                 "weights discarded too) is not built.", param="level")  # fmt: skip
        return await _each(targets, "sleeping", lambda engine: engine.sleep())

    @engines.post("/wake_up")
    async def wake_up(
        request: Request,
        tags: Annotated[list[str] | None, Query(description="vLLM's: weights, kv_cache; default both.")] = None,
    ) -> Response:
        """Take the KV cache's memory again and serve (``tags=weights`` alone: the weights never left, nothing to do)."""
        targets = chosen(request)  # the admin key first
        unknown = sorted(set(tags or ()) - WAKE_TAGS)
        if unknown:
            raise InvalidRequest(f"Unknown wake_up tags {unknown}; expected any of {sorted(WAKE_TAGS)}.", param="tags")
        done = {}
        for engine in targets:
            if tags is None or "kv_cache" in tags:
                await engine.wake_up()
            done[engine.name] = "sleeping" if engine.sleeping else "awake"
        return json_response({"engines": done})

    @engines.post("/v1/load_lora_adapter", response_class=PlainTextResponse,
                  openapi_extra=_json_body(LoadLoraAdapterRequest))  # fmt: skip
    async def load_lora_adapter(request: Request) -> Response:
        """Serve a PEFT LoRA adapter directory as a model of its own, on a local chat engine."""
        engine = _lora_engine(request, keys, table)
        body = await _read(request, LoadLoraAdapterRequest)
        name = body.lora_name
        if table.parent_of(name) is not None:
            raise InvalidRequest(f"The lora adapter '{name}' has already been loaded.", param="lora_name")
        if table.is_public(name) or name in _upstream_names(table, engine):
            raise InvalidRequest(f"'{name}' is already a model's name: give the adapter another.", param="lora_name")
        await engine.load_lora_adapter(name, body.lora_path)
        table.add_model(name, Deployment(engine.name, name, engine), table.base_model_of(engine))
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    @engines.post("/v1/unload_lora_adapter", response_class=PlainTextResponse,
                  openapi_extra=_json_body(UnloadLoraAdapterRequest))  # fmt: skip
    async def unload_lora_adapter(request: Request) -> Response:
        """Stop serving a LoRA adapter; 409 while its requests run."""
        require_admin_key(keys, request.scope["headers"])
        name = (await _read(request, UnloadLoraAdapterRequest)).lora_name
        if table.parent_of(name) is None:
            raise OpenAIError(f"The lora adapter '{name}' cannot be found.", status_code=404,
                              error_type="invalid_request_error", param="lora_name", code="model_not_found")  # fmt: skip
        engine = table.deployments_for(name)[0].provider
        assert isinstance(engine, ServesLoraAdapters)
        if not await engine.unload_lora_adapter(name):
            raise OpenAIError(
                f"Requests are running on the lora adapter '{name}': it stays loaded; try again once they finished.",
                status_code=BUSY, error_type="invalid_request_error", code="engine_busy",
            )  # fmt: skip
        table.remove_model(name)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

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


def _engines(request: Request, keys: KeyRing, table: ModelTable, kind: type[E]) -> list[E]:
    """The engines here of ``kind`` (an admin key checked first): all, or the one ``?provider=`` names."""
    require_admin_key(keys, request.scope["headers"])
    found = [engine for engine in table.engines_here() if isinstance(engine, kind)]
    name = request.query_params.get("provider")
    if name is not None:
        found = [engine for engine in found if engine.name == name]  # type: ignore[attr-defined]
        if not found:
            raise InvalidRequest(f"No local chat engine is named '{name}'.", param="provider")
    return found


def _lora_engine(request: Request, keys: KeyRing, table: ModelTable) -> ServesLoraAdapters:
    """The engine an adapter goes to: the only one, or the one ``?provider=`` names."""
    serving = _engines(request, keys, table, ServesLoraAdapters)
    if len(serving) != 1:
        named = ", ".join(engine.name for engine in serving)
        reason = f"Several local chat engines serve LoRA adapters ({named}): name one with ?provider=." if serving \
            else "No local chat engine here serves LoRA adapters."  # fmt: skip
        raise InvalidRequest(reason, param="provider")
    return serving[0]


async def _read(request: Request, model: type[Checked]) -> Checked:
    return parse_model(await read_body(request.scope, request.receive, _LORA_BODY_LIMITS.max_bytes), model,
                       _LORA_BODY_LIMITS)  # fmt: skip


def _upstream_names(table: ModelTable, engine: ServesLoraAdapters) -> set[str]:
    """The upstream ``model`` names the configured models send to ``engine``: an adapter of that name would take them."""
    return {
        deployment.model
        for model in table.model_names if table.parent_of(model) is None
        for deployment in table.deployments_for(model) if deployment.provider is engine
    }  # fmt: skip


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads its own, as FastAPI would describe it (as tokenize.py's)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}
