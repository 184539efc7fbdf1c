"""A fast fake OpenAI upstream for benchmarks: canned answers, nothing else.

A minimal asyncio (uvloop when installed) HTTP/1.1 keep-alive server. It
answers ``POST /v1/chat/completions`` (and ``/v1/completions``) with a
canned ``chat.completion`` JSON body, or, when the request body has
``"stream": true``, with an SSE stream of ``--chunks`` ``chat.completion.chunk``
events followed by ``data: [DONE]``, framed with chunked transfer-encoding.
``GET /health`` and ``GET /v1/models`` answer too, for smoke checks.

It is meant to cost as little CPU per request as Python allows, so that a
benchmark measures whatever sits in front of it, not the upstream. It runs in
its own process (never inside the process under test):

    python bench/fast_upstream.py --port 0          # prints "listening on PORT" on stdout
    python bench/fast_upstream.py --port 9001 --chunk-delay-ms 1

Between stream events it waits ``--chunk-delay-ms`` (default 1 ms) so each
event reaches the reader in its own read, the way tokens arrive from a real
model; ``0`` writes the whole stream at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections import deque

try:
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover - orjson is a gateway dependency
    _loads = json.loads

CREATED = 1_763_683_200  # 2025-11-21, a fixed value so answers are byte-identical

_COMPLETION = {
    "id": "chatcmpl-bench0000000000000000000000",
    "object": "chat.completion",
    "created": CREATED,
    "model": "fake-model",
    "system_fingerprint": "fp_bench",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello! This is a canned answer from the benchmark's fake upstream. "
                "It is about as long as a short reply from a real model.",
                "refusal": None,
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 24, "completion_tokens": 28, "total_tokens": 52},
}

_TOKENS = ["Hello", "!", " This", " is", " a", " streamed", " answer", " from", " the", " fake"]


def _chunk(index: int, count: int) -> dict:
    delta: dict = {"content": _TOKENS[index % len(_TOKENS)]}
    if index == 0:
        delta = {"role": "assistant", **delta}
    return {
        "id": "chatcmpl-bench0000000000000000000000",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "fake-model",
        "system_fingerprint": "fp_bench",
        "choices": [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": "stop" if index == count - 1 else None}
        ],
    }


def _http_chunk(payload: bytes) -> bytes:
    """One transfer-encoding chunk."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _response(status: str, content_type: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\ncontent-type: " + content_type
        + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


class Canned:
    """Every byte the server writes, built once at start."""

    def __init__(self, chunks: int) -> None:
        body = json.dumps(_COMPLETION, separators=(",", ":")).encode()
        self.completion = _response("200 OK", b"application/json", body)
        self.health = _response("200 OK", b"application/json", b'{"status":"ok"}')
        models = {"object": "list", "data": [{"id": "fake-model", "object": "model", "created": CREATED,
                                               "owned_by": "bench"}]}
        self.models = _response("200 OK", b"application/json", json.dumps(models).encode())
        self.not_found = _response(
            "404 Not Found", b"application/json",
            b'{"error":{"message":"not found","type":"invalid_request_error","param":null,"code":null}}',
        )
        self.bad_request = _response(
            "400 Bad Request", b"application/json",
            b'{"error":{"message":"bad request","type":"invalid_request_error","param":null,"code":null}}',
        )
        self.stream_head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        self.events = [
            _http_chunk(b"data: " + json.dumps(_chunk(i, chunks), separators=(",", ":")).encode() + b"\n\n")
            for i in range(chunks)
        ]
        self.stream_end = _http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
        self.whole_stream = self.stream_head + b"".join(self.events) + self.stream_end


class UpstreamProtocol(asyncio.Protocol):
    """One keep-alive connection. Requests are answered in order; a stream in
    progress holds later (pipelined) requests back until it ends."""

    def __init__(self, canned: Canned, chunk_delay: float) -> None:
        self.canned = canned
        self.chunk_delay = chunk_delay
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.streaming: asyncio.Task | None = None
        self.pending: deque[tuple[bytes, bytes]] = deque()
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.streaming is not None:
            self.streaming.cancel()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > 65536:
                    self._fail()
                return
            head = bytes(buffer[:end])
            length = 0
            lower = head.lower()
            at = lower.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = lower.find(b"\r\n", at + 2)
                length = int(lower[at + 17 : stop if stop >= 0 else None])
            elif b"\r\ntransfer-encoding:" in lower:
                self._fail()  # chunked request bodies: no client of ours sends them
                return
            total = end + 4 + length
            if len(buffer) < total:
                return
            body = bytes(buffer[end + 4 : total])
            del buffer[:total]
            if b"\r\nconnection: close" in lower:
                self.closing = True
            if self.streaming is not None:
                self.pending.append((head, body))
            else:
                self._answer(head, body)
            if self.closing:
                return

    def _fail(self) -> None:
        assert self.transport is not None
        self.transport.write(self.canned.bad_request)
        self.transport.close()
        self.closing = True

    def _answer(self, head: bytes, body: bytes) -> None:
        transport = self.transport
        assert transport is not None
        line_end = head.find(b"\r\n")
        method, _, rest = head[: line_end if line_end >= 0 else None].partition(b" ")
        path = rest.partition(b" ")[0]
        canned = self.canned
        if method == b"POST" and path in (b"/v1/chat/completions", b"/v1/completions"):
            stream = False
            if b'"stream"' in body:
                try:
                    stream = _loads(body).get("stream") is True
                except ValueError:
                    transport.write(canned.bad_request)
                    return
            if not stream:
                transport.write(canned.completion)
            elif self.chunk_delay <= 0:
                transport.write(canned.whole_stream)
            else:
                self.streaming = asyncio.get_running_loop().create_task(self._stream())
                return
        elif method == b"GET" and path == b"/health":
            transport.write(canned.health)
        elif method == b"GET" and path == b"/v1/models":
            transport.write(canned.models)
        else:
            transport.write(canned.not_found)
        if self.closing:
            transport.close()

    async def _stream(self) -> None:
        transport = self.transport
        assert transport is not None
        canned = self.canned
        try:
            transport.write(canned.stream_head + canned.events[0])
            for event in canned.events[1:]:
                await asyncio.sleep(self.chunk_delay)
                if transport.is_closing():
                    return
                transport.write(event)
            await asyncio.sleep(self.chunk_delay)
            if transport.is_closing():
                return
            transport.write(canned.stream_end)
        except asyncio.CancelledError:
            return
        finally:
            self.streaming = None
        if self.closing:
            transport.close()
            return
        while self.pending and self.streaming is None and not self.closing:
            self._answer(*self.pending.popleft())


async def serve(host: str, port: int, chunks: int, chunk_delay: float, lifetime: float) -> None:
    loop = asyncio.get_running_loop()
    canned = Canned(chunks)
    server = await loop.create_server(
        lambda: UpstreamProtocol(canned, chunk_delay), host, port, backlog=1024, reuse_address=True
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"listening on {bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Bounded: the server never outlives --lifetime, even if its parent dies.
    deadline = time.monotonic() + lifetime
    async with server:
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                if os.getppid() == 1:  # orphaned
                    break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="only loopback addresses make sense here")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--chunks", type=int, default=20, help="content events per stream (default 20)")
    parser.add_argument("--chunk-delay-ms", type=float, default=1.0, help="pause between stream events")
    parser.add_argument("--lifetime", type=float, default=3600.0, help="exit after this many seconds")
    parser.add_argument("--no-uvloop", action="store_true", help="use asyncio's default loop")
    args = parser.parse_args(argv)
    if args.chunks < 1:
        parser.error("--chunks must be at least 1")
    runner = asyncio.run
    if not args.no_uvloop:
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            pass
    try:
        runner(serve(args.host, args.port, args.chunks, args.chunk_delay_ms / 1000, args.lifetime))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
