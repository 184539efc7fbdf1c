"""One batch line sent as a request through the relay, in this process, and its answer as an output line.

The line takes the path a client's request takes (``gateway.http.relay``):
the body checked, the key's models and limits, the cache, the router with
its fallbacks and retries, the ledger record, the webhooks. Only the HTTP
framing is skipped: the scope is built here, with the batch creator's key
already identified, and the answer is collected instead of sent.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.types import ASGIApp, Message

from gateway.batches.input import BatchLine
from gateway.batches.records import LineResult
from gateway.keys.keyring import SCOPE_KEY, ApiKey


# A local model's 503s that pass: it is loading, or asleep until POST /wake_up (providers/errors.py).
WAITING_CODES = frozenset({"model_loading", "model_sleeping"})


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: Any  # the JSON answer (a non-JSON one as its text)
    retry_after: float | None  # seconds, from Retry-After

    @property
    def says_wait(self) -> bool:
        """An answer that says "later", not "no": a 429 of a rate limit (the key's or an upstream's; not a spent
        budget), or a 503 of a local model still loading or put to sleep (a batch resumed at start comes before
        its model has loaded)."""
        error = self.body.get("error") if isinstance(self.body, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        if self.status == 429:
            return code != "insufficient_quota"
        return self.status == 503 and code in WAITING_CODES


async def send_line(relay: ASGIApp, path: str, body: dict[str, Any], request_id: str, key: ApiKey | None) -> Answer:
    """``body`` POSTed to ``path`` through ``relay`` as ``key``; the answer as the relay wrote it."""
    raw = orjson.dumps(body)
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())],
        "client": None, "server": None, "state": {"request_id": request_id, SCOPE_KEY: key},
    }  # fmt: skip
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if delivered:  # never asked again by the relay, which reads one whole body; a disconnect if it were
            return {"type": "http.disconnect"}
        delivered = True
        return {"type": "http.request", "body": raw, "more_body": False}

    status, headers, parts = 500, [], []

    async def send(message: Message) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status, headers = message["status"], message.get("headers", [])
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))

    await relay(scope, receive, send)
    content = b"".join(parts)
    try:
        answer: Any = orjson.loads(content)
    except orjson.JSONDecodeError:
        answer = content.decode("utf-8", "replace")
    return Answer(status, answer, _retry_after(headers))


def _retry_after(headers: list[tuple[bytes, bytes]]) -> float | None:
    value = next((v for n, v in headers if n.lower() == b"retry-after"), None)
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


def answered(line: BatchLine, answer: Answer, request_id: str) -> LineResult:
    """The output line of ``line`` answered ``answer``: a 2xx goes to the output file, anything else to the error file."""
    output = {
        "id": f"batch_req_{uuid.uuid4().hex}", "custom_id": line.custom_id,
        "response": {"status_code": answer.status, "request_id": request_id, "body": answer.body}, "error": None,
    }  # fmt: skip
    return LineResult(line.index, 200 <= answer.status < 300, output)


def unanswered(line: BatchLine, code: str, message: str) -> LineResult:
    """The error line of a line never sent (the batch expired first): OpenAI's ``error`` with no ``response``."""
    output = {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": line.custom_id, "response": None,
              "error": {"code": code, "message": message}}  # fmt: skip
    return LineResult(line.index, False, output)
