"""``/v1/batches``: create, retrieve, list and cancel, in OpenAI's shapes; run by ``gateway.batches.BatchRunner``.

The input file is read and checked at creation: a line that breaks a rule
is a 400 naming it (``gateway.batches.input``), and the key must be allowed
every model its lines name (403). A batch is its key's only, as files are.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from gateway.batches import BatchRunner, BatchStore, FileBodies, StoredBatch
from gateway.batches.creation import submit_batch
from gateway.batches.input import BatchLine, read_lines
from gateway.errors import BatchNotFound, InvalidBatchInput, InvalidRequest
from gateway.http.responses import json_response
from gateway.keys.keyring import api_key_of, key_name_of


class CreateBatch(BaseModel):
    """OpenAI's CreateBatchRequest; ``output_expires_after`` is taken and ignored (files are kept until deleted)."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1, max_length=256, description="A file uploaded with purpose `batch`.")
    endpoint: Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/moderations", "/v1/responses"]
    completion_window: Literal["24h"]
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = Field(None, max_length=16)
    output_expires_after: dict[str, object] | None = None


def batch_routes(store: BatchStore, bodies: FileBodies, runner: BatchRunner) -> APIRouter:
    api = APIRouter(prefix="/v1", tags=["batches"])

    async def shown(batch: StoredBatch) -> Response:
        return json_response(batch.to_openai(*await store.counts(batch.id)))

    async def found(request: Request, batch_id: str) -> StoredBatch:
        batch = await store.get_batch(batch_id, key_name_of(request.scope))
        if batch is None:
            raise BatchNotFound(batch_id)
        return batch

    @api.post("/batches")
    async def create_batch(request: Request, body: CreateBatch) -> Response:
        """Create a batch from an uploaded file of requests; the gateway runs it through its router."""
        key = api_key_of(request.scope)
        owner = key_name_of(request.scope)
        record = await store.get_file(body.input_file_id, owner)
        if record is None or record.purpose != "batch":
            raise InvalidRequest(f"No file with id '{body.input_file_id[:64]}' and purpose `batch` found.", param="input_file_id")
        content = await bodies.read(record.id)
        if content is None:
            raise InvalidRequest(f"The file '{record.id}' has no content any more.", param="input_file_id")
        lines = await asyncio.to_thread(read_lines, content, body.endpoint)
        batch = await submit_batch(store, runner, key, record.id, body.endpoint, lines, _unserved, body.metadata)
        return json_response(batch.to_openai(0, 0))

    @api.get("/batches")
    async def list_batches(
        request: Request,
        after: Annotated[str | None, Query(description="The id of the batch the page starts after.")] = None,
        limit: Annotated[int, Query(ge=1, le=100, description="Batches per page.")] = 20,
    ) -> Response:
        """The batches of the calling key, newest first."""
        page = await store.list_batches(key_name_of(request.scope), after, limit + 1)
        data = [batch.to_openai(*await store.counts(batch.id)) for batch in page[:limit]]
        return json_response({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                              "last_id": data[-1]["id"] if data else None, "has_more": len(page) > limit})  # fmt: skip

    @api.get("/batches/{batch_id}")
    async def retrieve_batch(request: Request, batch_id: str) -> Response:
        """A batch, with its request counts so far."""
        return await shown(await found(request, batch_id))

    @api.post("/batches/{batch_id}/cancel")
    async def cancel_batch(request: Request, batch_id: str) -> Response:
        """Cancel a running batch: no new line is sent; once those in flight end, it is cancelled (with their results)."""
        batch = await found(request, batch_id)
        return await shown(await runner.cancel(batch))

    return api


def _unserved(line: BatchLine) -> InvalidBatchInput:
    return InvalidBatchInput(None, f"request {line.index + 1} (custom_id '{line.custom_id[:64]}') names the model "
                             f"'{str(line.body['model'])[:128]}', which this gateway does not serve.")  # fmt: skip
