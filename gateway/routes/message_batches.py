"""Anthropic's Message Batches API (``/v1/messages/batches``), run by the gateway's batch runner on every provider.

    POST   /v1/messages/batches                    {"requests": [{"custom_id", "params"}]}: a MessageBatch
    GET    /v1/messages/batches                    the key's, newest first (after_id, limit)
    GET    /v1/messages/batches/{id}               one MessageBatch, its request_counts so far
    POST   /v1/messages/batches/{id}/cancel        no new request is sent; canceling, then ended
    GET    /v1/messages/batches/{id}/results       once ended: one JSON line per request, its result
    DELETE /v1/messages/batches/{id}               an ended batch forgotten

A Message Batch is a gateway batch (``gateway.batches``) whose lines go to
the relay's ``/v1/messages`` door, so each request is translated, routed,
limited and counted as a live Messages request, and kept and resumed as any
batch. Its requests are kept as an input file (purpose ``batch``) of
``{custom_id, method, url: /v1/messages, body: params}`` lines; its id
starts ``msgbatch_``. Errors here are in Anthropic's shape (the doors' rule
for ``/v1/messages/*``, ``gateway.http.doors.error_body_for``).
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from gateway.batches import BatchRunner, BatchStore, FileBodies, StoredBatch, StoredFile
from gateway.batches.creation import submit_batch
from gateway.batches.input import BatchLine
from gateway.batches.records import ENDED, LineResult
from gateway.errors import BatchNotFound, BatchStillRunning, InvalidRequest
from gateway.http.doors.anthropic_messages import MessagesRequest, error_type_of
from gateway.http.responses import json_response
from gateway.keys.keyring import api_key_of, key_name_of
from providers import OpenAIError

ENDPOINT = "/v1/messages"
KIND = "msgbatch_"
MAX_REQUESTS = 100_000  # Anthropic's limit per batch
CUSTOM_ID = r"^[a-zA-Z0-9_-]{1,64}$"


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    custom_id: str = Field(pattern=CUSTOM_ID, description="Unique in the batch: its result carries it.")
    params: dict[str, Any] = Field(description="A Messages API request (POST /v1/messages), not streamed.")


class CreateMessageBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: list[BatchRequest] = Field(min_length=1, max_length=MAX_REQUESTS)


def message_batch_routes(store: BatchStore, bodies: FileBodies, runner: BatchRunner) -> APIRouter:
    api = APIRouter(prefix="/v1/messages/batches", tags=["anthropic"])

    async def found(request: Request, batch_id: str) -> StoredBatch:
        batch = await store.get_batch(batch_id, key_name_of(request.scope)) if batch_id.startswith(KIND) else None
        if batch is None:
            raise BatchNotFound(batch_id)
        return batch

    async def shown(request: Request, batch: StoredBatch) -> dict[str, Any]:
        return message_batch(batch, await store.results(batch.id), str(request.base_url).rstrip("/"))

    @api.post("")
    async def create_message_batch(request: Request, body: CreateMessageBatch) -> Response:
        """Create a Message Batch: each request answered as POST /v1/messages would answer it."""
        lines = _checked_lines(body.requests)
        key, now = api_key_of(request.scope), int(time.time())
        content = b"".join(orjson.dumps({"custom_id": line.custom_id, "method": "POST", "url": ENDPOINT, "body": line.body})
                           + b"\n" for line in lines)  # fmt: skip
        file_id = f"file-{uuid.uuid4().hex}"
        await bodies.write(file_id, content)
        await store.put_file(StoredFile(file_id, key_name_of(request.scope), "message_batch_requests.jsonl", "batch", len(content), now))
        batch = await submit_batch(store, runner, key, file_id, ENDPOINT, lines, _unserved, kind=KIND)
        return json_response(await shown(request, batch))

    @api.get("")
    async def list_message_batches(
        request: Request,
        after_id: Annotated[str | None, Query(description="The page after this batch (older ones).")] = None,
        before_id: Annotated[str | None, Query(description="Not taken: pages go from newest to oldest.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="Batches per page.")] = 20,
    ) -> Response:
        """The Message Batches of the calling key, newest first."""
        if before_id is not None:
            raise InvalidRequest("`before_id` is not supported here; page with `after_id` from the newest.", param="before_id")
        page = await store.list_batches(key_name_of(request.scope), after_id, limit + 1, kind=KIND)
        data = [await shown(request, batch) for batch in page[:limit]]
        return json_response({"data": data, "has_more": len(page) > limit, "first_id": data[0]["id"] if data else None,
                              "last_id": data[-1]["id"] if data else None})  # fmt: skip

    @api.get("/{message_batch_id}")
    async def retrieve_message_batch(request: Request, message_batch_id: str) -> Response:
        """A Message Batch, with its request counts so far."""
        return json_response(await shown(request, await found(request, message_batch_id)))

    @api.post("/{message_batch_id}/cancel")
    async def cancel_message_batch(request: Request, message_batch_id: str) -> Response:
        """Cancel it: requests not yet sent are canceled; it ends once those in flight are answered."""
        batch = await found(request, message_batch_id)
        return json_response(await shown(request, await runner.cancel(batch)))

    @api.get("/{message_batch_id}/results")
    async def message_batch_results(request: Request, message_batch_id: str) -> Response:
        """One JSON line per request, once the batch has ended: succeeded, errored, canceled or expired."""
        batch = await found(request, message_batch_id)
        if batch.status not in ENDED:
            raise BatchStillRunning(batch.id, "its results come")
        kept = {result.line: result for result in await store.results(batch.id)}
        content = await bodies.read(batch.input_file_id)
        custom_ids = [orjson.loads(raw)["custom_id"] for raw in content.splitlines() if raw.strip()] if content else []
        rows = [_result_row(kept[index]) if index in kept else {"custom_id": custom_id, "result": {"type": "canceled"}}
                for index, custom_id in enumerate(custom_ids)] or [_result_row(result) for result in kept.values()]  # fmt: skip
        return Response(b"".join(orjson.dumps(row) + b"\n" for row in rows), media_type="application/binary")

    @api.delete("/{message_batch_id}")
    async def delete_message_batch(request: Request, message_batch_id: str) -> Response:
        """Forget an ended Message Batch and its results."""
        batch = await found(request, message_batch_id)
        if batch.status not in ENDED:
            raise BatchStillRunning(batch.id, "it can be deleted")
        await store.delete_batch(batch.id, key_name_of(request.scope))
        return json_response({"id": batch.id, "type": "message_batch_deleted"})

    return api


def _checked_lines(requests: list[BatchRequest]) -> list[BatchLine]:
    """The requests as batch lines, each checked as POST /v1/messages checks a body; a 400 names the first bad one."""
    seen: dict[str, int] = {}
    lines = []
    for index, entry in enumerate(requests):
        if entry.custom_id in seen:
            raise InvalidRequest(f"requests[{index}].custom_id '{entry.custom_id}' is used by requests[{seen[entry.custom_id]}] "
                                 "too; each must be unique.", param=f"requests[{index}].custom_id")  # fmt: skip
        seen[entry.custom_id] = index
        if entry.params.get("stream") is True:
            raise InvalidRequest("A batched request is answered whole: `stream` must not be true.",
                                 param=f"requests[{index}].params.stream")  # fmt: skip
        try:
            MessagesRequest.model_validate(entry.params)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise InvalidRequest(f"requests[{index}].params.{where}: {first['msg']}.",
                                 param=f"requests[{index}].params.{where}") from None  # fmt: skip
        lines.append(BatchLine(index, entry.custom_id, entry.params))
    return lines


def _unserved(line: BatchLine) -> InvalidRequest:
    return InvalidRequest(f"requests[{line.index}].params.model: '{str(line.body['model'])[:128]}' is not a model this "
                          "gateway serves.", param=f"requests[{line.index}].params.model")  # fmt: skip


def message_batch(batch: StoredBatch, results: list[LineResult], base_url: str) -> dict[str, Any]:
    """``batch`` as Anthropic's MessageBatch object."""
    succeeded = sum(result.ok for result in results)
    expired = sum(not result.ok and _expired(result) for result in results)
    errored = len(results) - succeeded - expired
    left = batch.total - len(results)
    ended = batch.status in ENDED
    times = batch.times
    ended_at = next((times[stamp] for stamp in ("completed_at", "cancelled_at", "expired_at", "failed_at") if stamp in times), None)
    return {
        "id": batch.id, "type": "message_batch",
        "processing_status": "ended" if ended else "canceling" if batch.status == "cancelling" else "in_progress",
        "request_counts": {"processing": 0 if ended else left, "succeeded": succeeded,
                           "errored": errored + (left if batch.status == "failed" else 0),
                           "canceled": left if batch.status == "cancelled" else 0, "expired": expired},
        "ended_at": _rfc3339(ended_at), "created_at": _rfc3339(batch.created_at), "expires_at": _rfc3339(batch.expires_at),
        "archived_at": None, "cancel_initiated_at": _rfc3339(times.get("cancelling_at")),
        "results_url": f"{base_url}/v1/messages/batches/{batch.id}/results" if ended else None,
    }  # fmt: skip


def _result_row(result: LineResult) -> dict[str, Any]:
    """A kept line result as a MessageBatchIndividualResponse."""
    output = result.output
    response = output.get("response") or {}
    if result.ok:
        return {"custom_id": output["custom_id"], "result": {"type": "succeeded", "message": response.get("body")}}
    if _expired(result):
        return {"custom_id": output["custom_id"], "result": {"type": "expired"}}
    return {"custom_id": output["custom_id"], "result": {"type": "errored", "error": _anthropic_error(response, output)}}


def _expired(result: LineResult) -> bool:
    error = result.output.get("error")
    return isinstance(error, dict) and error.get("code") == "batch_expired"


def _anthropic_error(response: dict[str, Any], output: dict[str, Any]) -> dict[str, Any]:
    """A failed line's error as Anthropic's ErrorResponse: the door's own body, or an OpenAI-shaped one translated."""
    body = response.get("body")
    if isinstance(body, dict) and body.get("type") == "error":
        return body
    error = body.get("error") if isinstance(body, dict) else output.get("error")
    message = error.get("message") if isinstance(error, dict) else str(body)
    status = response.get("status_code") or 500
    return {"type": "error", "error": {"type": error_type_of(OpenAIError(str(message), status_code=status)), "message": message}}


def _rfc3339(seconds: int | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")
