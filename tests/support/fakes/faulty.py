"""An OpenAI-like upstream on a real socket whose every answer a test scripts: the fault injector.

It speaks HTTP/1.1 itself (asyncio streams, keep-alive) rather than through
an ASGI server, because the faults worth testing live below ASGI: a
connection reset before any byte, a stream cut mid-body, a stall. Each
request takes the next :class:`Fault` from the script (an empty script
answers ``ok``) and is recorded with its arrival time, so a test can assert
the exact number of calls and the waits between them.

    upstream = FaultyUpstream()
    upstream.script(Fault.status(503), Fault.status(429, retry_after_ms=50), Fault.ok())
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Bounds every hang: no test waits on the fake longer than this.
HANG_SECONDS = 20.0


@dataclass(frozen=True)
class Fault:
    kind: str = "ok"  # ok | status | hang | reset | cut | stall | malformed | not_json
    http_status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    delay: float = 0.0  # before the status line: a slow first byte
    events: int = 3  # content events in a stream (before the fault, for cut / stall / malformed)

    @classmethod
    def ok(cls, delay: float = 0.0, events: int = 3) -> Fault:
        return cls("ok", delay=delay, events=events)

    @classmethod
    def status(
        cls, status: int, *, code: str | None = None, retry_after: str | None = None, retry_after_ms: int | None = None
    ) -> Fault:
        headers = {}
        if retry_after is not None:
            headers["retry-after"] = retry_after
        if retry_after_ms is not None:
            headers["retry-after-ms"] = str(retry_after_ms)
        error_type = "rate_limit_error" if status == 429 else "invalid_request_error" if status < 500 else "server_error"
        body = {"error": {"message": f"scripted {status}", "type": error_type, "param": None, "code": code}}
        return cls("status", http_status=status, headers=headers, body=body)

    @classmethod
    def hang(cls) -> Fault:
        return cls("hang")

    @classmethod
    def reset(cls) -> Fault:
        """Close the connection with a TCP reset, before any byte of the answer."""
        return cls("reset")

    @classmethod
    def cut(cls, after: int) -> Fault:
        """A stream that sends ``after`` events, then resets the connection."""
        return cls("cut", events=after)

    @classmethod
    def stall(cls, after: int) -> Fault:
        """A stream that sends ``after`` events, then goes quiet."""
        return cls("stall", events=after)

    @classmethod
    def not_json(cls) -> Fault:
        """A 200 whose body is cut-off JSON."""
        return cls("not_json")

    @classmethod
    def malformed(cls, after: int) -> Fault:
        """A stream whose event after ``after`` good ones is not JSON."""
        return cls("malformed", events=after)


@dataclass(frozen=True)
class Received:
    at: float  # time.monotonic() when the request arrived
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class FaultyUpstream:
    """``with FaultyUpstream() as upstream: upstream.url`` -- a loopback server in a background thread."""

    def __init__(self, name: str = "upstream", default: Callable[[dict[str, Any]], Fault] | None = None) -> None:
        self.name = name
        # Picks the answer when the script is empty, from the request body (bench/chaos.py draws faults at random).
        self.default = default or (lambda payload: Fault.ok())
        self.requests: list[Received] = []
        self._script: deque[Fault] = deque()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._stopping: asyncio.Event | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.port = 0

    def script(self, *faults: Fault) -> None:
        """Answer the next requests with ``faults``, in order (replacing what was left)."""
        self._script = deque(faults)

    def reset_log(self) -> None:
        self.requests.clear()
        self._script.clear()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FaultyUpstream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _start(self) -> None:
        self._stopping = asyncio.Event()
        self._server = await asyncio.start_server(self._serve_connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None and self._stopping is not None
        self._stopping.set()
        self._server.close()
        # Kept-alive connections are still being served: end them while the loop runs.
        for task in self._connections:
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while await self._serve_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _serve_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection is done."""
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = dict(
            (name.strip().lower(), value.strip())
            for name, _, value in (line.partition(":") for line in header_lines if line)
        )
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        payload = json.loads(body) if body else {}
        self.requests.append(Received(time.monotonic(), request_line.split()[1], headers, payload))
        fault = self._script.popleft() if self._script else self.default(payload)

        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.kind == "hang":
            await self._hang()
            return False
        if fault.kind == "reset":
            _reset(writer)
            return False
        if fault.kind == "status":
            await _send_json(writer, fault.http_status, fault.body or {}, fault.headers)
            return True
        if fault.kind == "not_json":
            data = json.dumps(completion(payload.get("model", "?"), self.name)).encode()[:40]
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(data), data))
            await writer.drain()
            return True
        if not payload.get("stream"):
            await _send_json(writer, 200, completion(payload.get("model", "?"), self.name), {})
            return True
        return await self._stream(writer, payload.get("model", "?"), fault)

    async def _stream(self, writer: asyncio.StreamWriter, model: str, fault: Fault) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        for index in range(fault.events):
            _write_chunk(writer, _event(chunk(model, f"{self.name}-{index} ")))
            await writer.drain()
            await asyncio.sleep(0.005)  # separate reads, as a real stream arrives
        if fault.kind == "cut":
            _reset(writer)
            return False
        if fault.kind == "stall":
            await self._hang()
            return False
        if fault.kind == "malformed":
            _write_chunk(writer, b'data: {"choices": [{"delta": {"content": "oops"\n\n')
        _write_chunk(writer, _event(chunk(model, None, finish_reason="stop")) + b"data: [DONE]\n\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    async def _hang(self) -> None:
        assert self._stopping is not None
        try:
            await asyncio.wait_for(self._stopping.wait(), HANG_SECONDS)
        except TimeoutError:
            pass


def completion(model: str, content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-faulty",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }


def chunk(model: str, content: str | None, finish_reason: str | None = None) -> dict[str, Any]:
    delta = {"content": content} if content is not None else {}
    return {
        "id": "chatcmpl-faulty",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def _write_chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")


async def _send_json(writer: asyncio.StreamWriter, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
    data = json.dumps(body).encode()
    head = [f"HTTP/1.1 {status} Scripted", "content-type: application/json", f"content-length: {len(data)}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
    await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Abort with RST: SO_LINGER with a zero timeout makes close() send a reset, not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
