"""The load generator: raw-socket HTTP/1.1 keep-alive clients, and what a phase of load measured.

One ``asyncio.Protocol`` per connection, one request in flight on each. It
parses only what it needs (status, content-length or chunked framing, the
``data:`` events), so it costs about 10 µs of CPU per request: the bench
measures the gateway, not an HTTP client.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field

from procstat import cpu_time
from workload import CHUNKS, HOST, Scenario, chat_request

REQUEST_TIMEOUT = 15.0  # seconds a phase may overrun its duration before its workers are cancelled
MAX_REQUESTS_PER_PHASE = 500_000
DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class Reply:
    ok: bool  # 200, and for a stream every event and [DONE]
    total: float  # seconds from the request's write to the reply's last byte
    first_event: float | None  # seconds to the first ``data:`` event; None unless streamed


class ClientConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Reply] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed mid-response"))

    def request(self, data: bytes, stream: bool) -> asyncio.Future[Reply]:
        """Write one request (``data``, already framed); the future gets its ``Reply``."""
        assert self.transport is not None
        if self.lost:
            raise ConnectionError("connection closed")
        self.buffer.clear()
        self.stream = stream
        self.head_end = -1
        self.length = -1
        self.chunked = False
        self.status = 0
        self.body = bytearray()
        self.pos = 0
        self.first_event: float | None = None
        self.waiter = asyncio.get_running_loop().create_future()
        self.started = time.perf_counter()
        self.transport.write(data)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()  # first, so parsing is not counted in the latency
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        buffer = self.buffer
        buffer += data
        if self.head_end < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).lower()
            self.status = int(head[9:12])
            self.head_end = self.pos = end + 4
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                self.length = int(head[at + 17 : stop if stop >= 0 else None])
            else:
                self.chunked = b"transfer-encoding: chunked" in head
        if not self.chunked:
            if self.length < 0:
                waiter.set_result(Reply(False, now - self.started, None))  # neither length nor chunks
                return
            if len(buffer) - self.head_end >= self.length:
                if self.stream and b"data:" in buffer:
                    self.first_event = self.first_event or now
                ok = self.status == 200 and (not self.stream or buffer.endswith(DONE))
                waiter.set_result(Reply(ok, now - self.started, self._since(self.first_event)))
            return
        # Chunked transfer-encoding: decode what has arrived.
        pos = self.pos
        while True:
            line_end = buffer.find(b"\r\n", pos)
            if line_end < 0:
                break
            size = int(buffer[pos:line_end].split(b";", 1)[0], 16)
            if size == 0:
                if len(buffer) < line_end + 4:
                    break  # the final CRLF has not arrived
                body = self.body
                ok = self.status == 200 and (
                    not self.stream or (body.count(b"data:") == CHUNKS + 1 and body.endswith(DONE))
                )
                waiter.set_result(Reply(ok, now - self.started, self._since(self.first_event)))
                return
            start = line_end + 2
            if len(buffer) < start + size + 2:
                break
            payload = buffer[start : start + size]
            if self.first_event is None and b"data:" in payload:
                self.first_event = now
            self.body += payload
            pos = start + size + 2
        self.pos = pos

    def _since(self, moment: float | None) -> float | None:
        return None if moment is None else moment - self.started

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@dataclass
class Measurement:
    """What one phase of load measured, or the sum of several (``add``)."""

    requests: int = 0
    errors: int = 0
    elapsed: float = 0.0  # seconds
    latencies: list[float] = field(default_factory=list)  # seconds, one per completed request
    first_events: list[float] = field(default_factory=list)  # seconds, one per completed stream
    cpu: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # process -> schedstat seconds
    cpu_ticks: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # process -> utime+stime

    def add(self, other: Measurement) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.elapsed += other.elapsed
        self.latencies += other.latencies
        self.first_events += other.first_events
        for name, value in other.cpu.items():
            self.cpu[name] += value
        for name, value in other.cpu_ticks.items():
            self.cpu_ticks[name] += value

    def cpu_ms(self, process: str) -> float:
        """Milliseconds of ``process``'s CPU per completed request."""
        return 1000 * self.cpu[process] / self.requests if self.requests else float("nan")

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed if self.elapsed else float("nan")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


async def open_connections(port: int, count: int) -> list[ClientConnection]:
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(count):
        _, protocol = await asyncio.wait_for(loop.create_connection(ClientConnection, HOST, port), 10)
        conns.append(protocol)
    return conns


async def run_phase(
    scenario: Scenario, port: int, duration: float, pids: dict[str, int], max_requests: int = MAX_REQUESTS_PER_PHASE
) -> Measurement:
    """``scenario``'s load on ``port`` for ``duration`` seconds, and the CPU each of ``pids`` spent meanwhile.

    The load generator's own CPU is recorded as process ``"loadgen"``.
    """
    result = Measurement()
    data = chat_request(port, scenario.stream)
    conns = await open_connections(port, scenario.concurrency)
    await asyncio.sleep(0.05)  # let the server accept them all before the CPU snapshot
    latencies, first_events = result.latencies, result.first_events

    async def worker(conn: ClientConnection, deadline: float) -> None:
        while time.perf_counter() < deadline and result.requests < max_requests:
            try:
                reply = await conn.request(data, scenario.stream)
            except ConnectionError:
                result.errors += 1
                return
            if not reply.ok:
                result.errors += 1
                continue
            result.requests += 1
            latencies.append(reply.total)
            if reply.first_event is not None:
                first_events.append(reply.first_event)

    before = {name: cpu_time(pid) for name, pid in pids.items()}
    before_self = time.process_time()
    started = time.perf_counter()
    tasks = [asyncio.create_task(worker(conn, started + duration)) for conn in conns]
    _, pending = await asyncio.wait(tasks, timeout=duration + REQUEST_TIMEOUT)
    for task in pending:
        task.cancel()
        result.errors += 1
    if pending:
        await asyncio.wait(pending, timeout=5)
    result.elapsed = time.perf_counter() - started
    for name, pid in pids.items():
        spent = cpu_time(pid) - before[name]
        result.cpu[name], result.cpu_ticks[name] = spent.scheduled, spent.ticks
    result.cpu["loadgen"] = time.process_time() - before_self
    for conn in conns:
        conn.close()
    await asyncio.sleep(0.02)
    return result
