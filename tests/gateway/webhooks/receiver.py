"""A webhook receiver on a real 127.0.0.1 socket that misbehaves on cue, and a Standard Webhooks check of its own."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

# What the receiver does with each call, in turn; past the script, it answers 200.
OK, UNAVAILABLE, RESET, HANG = "200", "503", "reset", "hang"


def slow_down(seconds: int) -> str:
    """A 429 with Retry-After."""
    return f"429:{seconds}"


@dataclass(frozen=True)
class Call:
    headers: dict[str, str]
    body: bytes
    answered: str
    at: float

    @property
    def event(self) -> dict:
        return orjson.loads(self.body)


@dataclass
class Receiver:
    script: list[str] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    answer_for: Callable[[int], str] | None = None  # instead of the script: the n-th call's behaviour
    port: int = 0

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def delivered(self) -> list[Call]:
        with self._lock:
            return [call for call in self.calls if call.answered == OK]

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Call]:
        deadline = time.monotonic() + timeout
        while len(self.delivered) < count:
            if time.monotonic() > deadline:
                answered = [call.answered for call in self.calls]
                raise AssertionError(f"{len(self.delivered)} of {count} events delivered; calls answered: {answered}")
            time.sleep(0.02)
        return self.delivered

    def __enter__(self) -> Receiver:
        self._thread.start()
        self._started.wait(5)
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _stop(self) -> None:
        self._server.close()
        handlers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:  # keep-alive: aiohttp reuses the connection
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")[1:]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            with self._lock:
                number = len(self.calls)
                behaviour = (
                    self.answer_for(number) if self.answer_for is not None
                    else self.script[number] if number < len(self.script) else OK
                )  # fmt: skip
                self.calls.append(Call(headers, body, behaviour, time.monotonic()))
            if behaviour == RESET:
                writer.transport.abort()  # a TCP reset, no answer
                return
            if behaviour == HANG:
                await asyncio.sleep(3600)
            status, _, retry_after = behaviour.partition(":")
            extra = f"retry-after: {retry_after}\r\n" if retry_after else ""
            writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\n{extra}\r\n".encode())
            await writer.drain()


def verify(secret: str, call: Call) -> bool:
    """The spec's check, written apart from the gateway's: HMAC-SHA256 of id.timestamp.body, any v1 signature."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{call.headers['webhook-id']}.{call.headers['webhook-timestamp']}.".encode() + call.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    given = [part.partition(",") for part in call.headers["webhook-signature"].split(" ")]
    return any(version == "v1" and hmac.compare_digest(signature, expected) for version, _, signature in given)
