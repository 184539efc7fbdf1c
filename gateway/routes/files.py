"""``/v1/files``: upload (multipart, purpose ``batch``), list, retrieve, download and delete, in OpenAI's shapes.

A file is its key's only (another key gets 404, as for no such file; admin
keys see all). Bodies go to disk (``gateway.batches.bodies``), records to
the batch store. An upload past ``server.max_file_bytes`` is refused with a
413 as soon as it passes the limit; the rest is never read.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.responses import FileResponse, Response

from gateway.batches import BatchStore, FileBodies, StoredFile
from gateway.errors import FileNotFound, FileTooLarge, InvalidRequest
from gateway.http.responses import json_response
from gateway.keys.keyring import key_name_of

# The purposes an upload may have: the gateway keeps files for its batches only.
UPLOAD_PURPOSES = ("batch",)
_UPLOAD_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file", "purpose"],
        "properties": {"file": {"type": "string", "format": "binary"}, "purpose": {"type": "string", "enum": list(UPLOAD_PURPOSES)}},
    }}},
}  # fmt: skip


def file_routes(store: BatchStore, bodies: FileBodies, max_file_bytes: int) -> APIRouter:
    api = APIRouter(prefix="/v1", tags=["files"])

    async def found(request: Request, file_id: str) -> StoredFile:
        record = await store.get_file(file_id, key_name_of(request.scope))
        if record is None:
            raise FileNotFound(file_id)
        return record

    @api.post("/files", openapi_extra={"requestBody": _UPLOAD_BODY})
    async def create_file(request: Request) -> Response:
        """Upload a file (multipart: `file`, `purpose` batch) for a batch's requests."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise InvalidRequest("POST /v1/files takes multipart/form-data with `file` and `purpose`.", param="file")
        try:
            form = await MultiPartParser(request.headers, _limited(request, max_file_bytes), max_files=1, max_fields=4).parse()
        except MultiPartException as error:
            raise InvalidRequest(f"The multipart body cannot be read: {error.message}", param="file") from None
        try:
            purpose, upload = form.get("purpose"), form.get("file")
            if purpose is None:
                raise InvalidRequest("The form has no `purpose` field: send `purpose=batch` with the `file`.", param="purpose")
            if purpose not in UPLOAD_PURPOSES:
                raise InvalidRequest(f"`purpose` must be one of {', '.join(UPLOAD_PURPOSES)}: this gateway keeps files for batches.", param="purpose")
            if not isinstance(upload, UploadFile):
                raise InvalidRequest("`file` must be a file part.", param="file")
            file_id = f"file-{uuid.uuid4().hex}"
            upload.file.seek(0)
            await bodies.write(file_id, upload.file)
            record = StoredFile(file_id, key_name_of(request.scope), (upload.filename or "upload.jsonl")[:256], str(purpose), upload.size or 0, int(time.time()))
            await store.put_file(record)
        finally:
            await form.close()
        return json_response(record.to_openai())

    @api.get("/files")
    async def list_files(
        request: Request,
        purpose: Annotated[str | None, Query(description="Only files with this purpose.")] = None,
        limit: Annotated[int, Query(ge=1, le=10000, description="Files per page.")] = 10000,
        order: Annotated[Literal["asc", "desc"], Query(description="By created_at.")] = "desc",
        after: Annotated[str | None, Query(description="The id of the file the page starts after.")] = None,
    ) -> Response:
        """The files of the calling key."""
        page = await store.list_files(key_name_of(request.scope), purpose, limit + 1, order == "desc", after)
        data = [record.to_openai() for record in page[:limit]]
        return json_response({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                              "last_id": data[-1]["id"] if data else None, "has_more": len(page) > limit})  # fmt: skip

    @api.get("/files/{file_id}")
    async def retrieve_file(request: Request, file_id: str) -> Response:
        """A file's record."""
        return json_response((await found(request, file_id)).to_openai())

    @api.get("/files/{file_id}/content", response_class=Response, responses={200: {"content": {"application/octet-stream": {}}}})
    async def retrieve_file_content(request: Request, file_id: str) -> Response:
        """A file's bytes as uploaded (a batch's output: JSONL, one answer per line)."""
        record = await found(request, file_id)
        path = bodies.path(record.id)
        if not path.exists():
            raise FileNotFound(file_id)
        return FileResponse(path, media_type="application/octet-stream", filename=record.filename)

    @api.delete("/files/{file_id}")
    async def delete_file(request: Request, file_id: str) -> Response:
        """Delete a file (a batch still running on it fails at its next resume)."""
        record = await found(request, file_id)
        if not await store.delete_file(record.id, key_name_of(request.scope)):
            raise FileNotFound(file_id)
        await bodies.delete(record.id)
        return json_response({"id": record.id, "object": "file", "deleted": True})

    return api


async def _limited(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body, raising FileTooLarge as soon as it passes ``limit`` bytes (a declared length first)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and len(declared) <= 18 and int(declared) > limit:
        raise FileTooLarge(limit)
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise FileTooLarge(limit)
        yield chunk
