"""A fake of OpenAI's (and Azure's) Files and Batch APIs, served for real on 127.0.0.1 by the tests.

As OpenAI documents them: ``POST /v1/files`` (multipart, ``purpose=batch``),
``GET /v1/files/{id}/content``, ``DELETE /v1/files/{id}``, ``POST /v1/batches``
(``input_file_id``, ``endpoint``, ``completion_window``, ``metadata``),
``GET /v1/batches`` (newest first, ``limit``), ``GET /v1/batches/{id}``,
``POST /v1/batches/{id}/cancel``; Azure's at ``/openai/...?api-version=``
with its ``api-key`` header, a line's ``url`` without ``/v1``. The key is
checked (OpenAI's 401 body otherwise); errors have OpenAI's shape.

A batch's life here is driven by its reads: created ``validating``; the
first ``GET`` finds it ``in_progress`` (or ``failed`` with ``errors`` when a
line breaks the Batch API's rules: another ``url``, no ``body.model``);
after ``reads_to_finish`` reads it is ``completed``, each line answered in
the output file (a chat completion quoting the last user message, with
usage) or, for a message ``fail-<status>``, in the error file with that
status; a message ``omit`` is in neither (a provider that lost it). ``POST /v1/chat/completions`` answers the same chat completion
live (for a batch the gateway runs line by line). A cancelled batch is ``cancelling`` then ``cancelled`` at the next
read, with no line answered. Scripted failures: ``create_failures`` creates
answer 503 after the batch was made (the client never learns its id),
``read_429s`` reads answer 429 with ``Retry-After: 0``.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.datastructures import UploadFile
from starlette.requests import Request

from .asgi import serve_lifespan

PROMPT_TOKENS, COMPLETION_TOKENS = 1000, 200
JSON = [(b"content-type", b"application/json")]


@dataclass
class FakeBatchAPI:
    api_key: str
    azure_key: str = "azure-batch-key-0123456789"
    reads_to_finish: int = 2
    create_failures: int = 0  # creates that make the batch, then answer 503
    read_429s: int = 0
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # id -> (purpose, content)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    uploads: list[bytes] = field(default_factory=list)  # every input file uploaded, in order
    deleted: list[str] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, path) of every authorized call
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _reads: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        request = Request(scope, receive)
        path = scope["path"]
        azure = path.startswith("/openai/")
        if azure:
            authorized = request.headers.get("api-key") == self.azure_key and "api-version" in request.query_params
            path = path.removeprefix("/openai/")
        else:
            authorized = request.headers.get("authorization") == f"Bearer {self.api_key}"
            path = path.removeprefix("/v1/")
        if not authorized:
            await _json(send, 401, _error("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"))
            return
        self.calls.append((scope["method"], path))
        parts = path.split("/")
        status, body, headers = await self._route(request, scope["method"], parts, azure)
        await _json(send, status, body, headers)

    async def _route(self, request: Request, method: str, parts: list[str], azure: bool) -> tuple[int, Any, list[Any]]:
        if parts == ["chat", "completions"] and method == "POST" and not azure:  # a live request (bench/batches.py)
            return 200, chat_answer(orjson.loads(await request.body()), next(self._ids)), []
        if parts == ["files"] and method == "POST":
            return await self._upload(request)
        if parts[0] == "files" and len(parts) == 3 and parts[2] == "content" and parts[1] in self.files:
            return 200, self.files[parts[1]][1], []
        if parts[0] == "files" and len(parts) == 2 and method == "DELETE" and parts[1] in self.files:
            del self.files[parts[1]]
            self.deleted.append(parts[1])
            return 200, {"id": parts[1], "object": "file", "deleted": True}, []
        if parts == ["batches"] and method == "POST":
            return self._create(orjson.loads(await request.body()), azure)
        if parts == ["batches"] and method == "GET":
            limit = int(request.query_params.get("limit", "20"))
            data = sorted(self.batches.values(), key=lambda b: b["created_at"], reverse=True)[:limit]
            return 200, {"object": "list", "data": data, "has_more": False}, []
        if parts[0] == "batches" and len(parts) >= 2 and parts[1] in self.batches:
            batch = self.batches[parts[1]]
            if len(parts) == 3 and parts[2] == "cancel" and method == "POST":
                if batch["status"] in ("validating", "in_progress"):
                    batch["status"], batch["cancelling_at"] = "cancelling", int(time.time())
                return 200, batch, []
            if len(parts) == 2 and method == "GET":
                with self._lock:
                    if self.read_429s:
                        self.read_429s -= 1
                        return 429, _error("Rate limit reached for requests", "requests", "rate_limit_exceeded"), [(b"retry-after", b"0")]
                return 200, self._advance(batch, azure), []
        return 404, _error(f"Invalid URL ({method} /{'/'.join(parts)})", "invalid_request_error"), []

    async def _upload(self, request: Request) -> tuple[int, Any, list[Any]]:
        form = await request.form(max_part_size=64 * 1024 * 1024)
        upload = form.get("file")
        if form.get("purpose") != "batch" or not isinstance(upload, UploadFile):
            return 400, _error("Invalid purpose: expected 'batch' and a file.", "invalid_request_error", param="purpose"), []
        file_id = f"file-up{next(self._ids)}"
        content = await upload.read()
        self.files[file_id] = ("batch", content)
        self.uploads.append(content)
        return 200, {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                     "filename": upload.filename, "purpose": "batch", "status": "processed"}, []  # fmt: skip

    def _create(self, body: dict[str, Any], azure: bool) -> tuple[int, Any, list[Any]]:
        if body.get("input_file_id") not in self.files:
            return 400, _error("The input file was not found.", "invalid_request_error", param="input_file_id"), []
        endpoint = body.get("endpoint")
        if endpoint != ("/chat/completions" if azure else "/v1/chat/completions") or body.get("completion_window") != "24h":
            return 400, _error(f"Invalid endpoint or window: {endpoint}", "invalid_request_error", param="endpoint"), []
        batch_id = f"batch_up{next(self._ids)}"
        self.batches[batch_id] = {
            "id": batch_id, "object": "batch", "endpoint": endpoint, "errors": None, "input_file_id": body["input_file_id"],
            "completion_window": "24h", "status": "validating", "output_file_id": None, "error_file_id": None,
            "created_at": int(time.time()) * 1000 + len(self.batches), "in_progress_at": None, "expires_at": int(time.time()) + 86400,
            "completed_at": None, "failed_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": body.get("metadata"),
        }  # fmt: skip
        with self._lock:
            if self.create_failures:
                self.create_failures -= 1
                return 503, _error("The server is overloaded.", "server_error"), []
        return 200, self.batches[batch_id], []

    def _advance(self, batch: dict[str, Any], azure: bool) -> dict[str, Any]:
        reads = self._reads[batch["id"]] = self._reads.get(batch["id"], 0) + 1
        lines = [orjson.loads(line) for line in self.files[batch["input_file_id"]][1].splitlines() if line]
        if batch["status"] == "validating":
            problems = [number for number, line in enumerate(lines, 1)
                        if line.get("url") != batch["endpoint"] or not line.get("body", {}).get("model")]  # fmt: skip
            if problems:
                batch["status"], batch["failed_at"] = "failed", int(time.time())
                batch["errors"] = {"object": "list", "data": [{"code": "invalid_request", "line": problems[0], "param": "url",
                                                               "message": "The url of this line is not the batch's endpoint."}]}  # fmt: skip
                return batch
            batch["status"], batch["in_progress_at"] = "in_progress", int(time.time())
            batch["request_counts"]["total"] = len(lines)
        elif batch["status"] == "cancelling":
            batch["status"], batch["cancelled_at"] = "cancelled", int(time.time())
        elif batch["status"] == "in_progress" and reads > self.reads_to_finish:
            self._complete(batch, lines)
        return batch

    def _complete(self, batch: dict[str, Any], lines: list[dict[str, Any]]) -> None:
        output, errors = [], []
        for number, line in enumerate(lines):
            said = line["body"]["messages"][-1]["content"]
            if said == "omit":  # a provider that loses a line: in neither file
                continue
            row = {"id": f"batch_req_up{number}", "custom_id": line["custom_id"], "error": None}
            if said.startswith("fail-"):
                status = int(said.removeprefix("fail-"))
                row["response"] = {"status_code": status, "request_id": f"req_up{number}",
                                   "body": _error(f"scripted {status}", "invalid_request_error")}  # fmt: skip
                errors.append(row)
                continue
            row["response"] = {"status_code": 200, "request_id": f"req_up{number}", "body": chat_answer(line["body"], number)}
            output.append(row)
        for kind, rows in (("output_file_id", output), ("error_file_id", errors)):
            if rows:
                file_id = f"file-out{next(self._ids)}"
                self.files[file_id] = ("batch_output", b"".join(orjson.dumps(row) + b"\n" for row in rows))
                batch[kind] = file_id
        batch["status"], batch["completed_at"] = "completed", int(time.time())
        batch["request_counts"] = {"total": len(lines), "completed": len(output), "failed": len(errors)}

    def uploaded_lines(self) -> list[dict[str, Any]]:
        """The lines of every input file uploaded, in order."""
        return [orjson.loads(line) for content in self.uploads for line in content.splitlines() if line]


def chat_answer(body: dict[str, Any], number: int) -> dict[str, Any]:
    """A chat completion quoting the last user message, with usage."""
    usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS}
    message = {"role": "assistant", "content": f"You said: {body['messages'][-1]['content']}", "refusal": None}
    return {"id": f"chatcmpl-up{number}", "object": "chat.completion", "created": 1700000000, "model": body["model"],
            "usage": usage, "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}]}  # fmt: skip


def _error(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


async def _json(send: Any, status: int, body: Any, headers: list[Any] | None = None) -> None:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    content_type = [(b"content-type", b"application/octet-stream")] if isinstance(body, bytes) else JSON
    await send({"type": "http.response.start", "status": status, "headers": [*content_type, *(headers or [])]})
    await send({"type": "http.response.body", "body": raw})
