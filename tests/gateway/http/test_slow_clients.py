"""Slow, idle and surplus clients are cut in time, while normal requests go on being served.

Every client here is a raw socket on 127.0.0.1 that writes on a schedule
(bounded: a finite list of chunks) and waits a bounded time for the server
to close it. The gateway runs with limits of about a second
(``LIMITS``), served as ``switchyard serve`` serves (``gateway.http.server``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import httpx
import orjson
import pytest

from gateway.app import create_app
from gateway.config import GatewayConfig
from gateway.http.server import open_file_shortfall
from tests.support.servers import ServedApp

LIMITS = {
    "header_timeout": 1.0,
    "body_timeout": 1.0,
    "body_min_rate": 1000,
    "keepalive_timeout": 1.0,
    "max_connections": 400,
    "usage_ledger": False,
}
# How late past its limit a cut may come on a busy 2-core machine.
SLACK = 1.5
CHAT = orjson.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]})
JSON = {"content-type": "application/json"}


def request_head(content_length: int) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % content_length
    )


def chat_of_length(length: int) -> bytes:
    """A valid chat request body of exactly ``length`` bytes."""
    short = orjson.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": ""}]})
    return orjson.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "x" * (length - len(short))}]})


@dataclass
class Closed:
    after: float  # seconds from connecting to the server's close
    answer: bytes  # all the server wrote


async def hold_open(
    port: int, chunks: Sequence[bytes] = (), interval: float = 0.1, give_up: float = 8.0
) -> Closed | None:
    """Connect, write ``chunks`` one every ``interval`` s, and wait for the server to close; None if it never did."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()

    async def write_slowly() -> None:
        for chunk in chunks:
            try:
                writer.write(chunk)
                await writer.drain()
            except OSError:  # closed by the server
                return
            await asyncio.sleep(interval)

    writing = asyncio.create_task(write_slowly())
    answer = b""
    try:
        async with asyncio.timeout(give_up):
            while data := await reader.read(65536):
                answer += data
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    finally:
        writing.cancel()
        writer.close()
    return Closed(time.monotonic() - started, answer)


def slow_headers(port: int) -> Iterator[bytes]:
    """A request's head, one byte at a time: 20 s of it at 0.1 s a byte, far past header_timeout."""
    head = request_head(len(CHAT)) + b"x-padding: " + b"p" * 200 + b"\r\n"
    return (head[i : i + 1] for i in range(len(head)))


def at_rate(body: bytes, bytes_per_second: int, interval: float = 0.1) -> list[bytes]:
    step = max(1, int(bytes_per_second * interval))
    return [body[i : i + step] for i in range(0, len(body), step)]


@pytest.fixture(scope="module")
def strict_gateway(gateway_config: GatewayConfig) -> Iterator[ServedApp]:
    server = gateway_config.server.model_copy(update=LIMITS)
    with ServedApp(create_app(gateway_config.model_copy(update={"server": server})), server=server) as served:
        yield served


async def chats_meanwhile(url: str, seconds: float) -> list[int]:
    """Normal chat requests, one after another, for ``seconds``: their statuses."""
    statuses = []
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and len(statuses) < 200:
            response = await http.post("/v1/chat/completions", content=CHAT, headers=JSON)
            statuses.append(response.status_code)
            await asyncio.sleep(0.05)
    return statuses


async def test_headers_that_trickle_are_cut_after_header_timeout_with_a_408(strict_gateway: ServedApp) -> None:
    closed = await hold_open(strict_gateway.port, list(slow_headers(strict_gateway.port)))
    assert closed is not None, "a client trickling its headers was never cut"
    assert LIMITS["header_timeout"] - 0.1 <= closed.after <= LIMITS["header_timeout"] + SLACK
    assert closed.answer.startswith(b"HTTP/1.1 408 ")
    assert b'"code":"request_timeout"' in closed.answer and b"connection: close" in closed.answer


async def test_a_connection_that_sends_nothing_is_closed_quietly_after_header_timeout(
    strict_gateway: ServedApp,
) -> None:
    closed = await hold_open(strict_gateway.port)
    assert closed is not None and closed.answer == b""
    assert LIMITS["header_timeout"] - 0.1 <= closed.after <= LIMITS["header_timeout"] + SLACK


async def test_an_idle_keep_alive_connection_is_closed_after_keepalive_timeout(strict_gateway: ServedApp) -> None:
    closed = await hold_open(strict_gateway.port, [request_head(len(CHAT)) + CHAT])
    assert closed is not None and closed.answer.startswith(b"HTTP/1.1 200 ")
    assert closed.answer.count(b"HTTP/1.1") == 1  # the answer, and nothing when it was closed
    assert LIMITS["keepalive_timeout"] - 0.1 <= closed.after <= LIMITS["keepalive_timeout"] + SLACK


async def test_a_kept_alive_connection_whose_next_request_trickles_is_cut(strict_gateway: ServedApp) -> None:
    closed = await hold_open(strict_gateway.port, [request_head(len(CHAT)) + CHAT, *slow_headers(strict_gateway.port)])
    assert closed is not None and closed.answer.startswith(b"HTTP/1.1 200 ")
    assert b"HTTP/1.1 408 " in closed.answer  # its first request was answered, its second cut
    assert LIMITS["header_timeout"] <= closed.after <= LIMITS["header_timeout"] + 0.1 + SLACK


async def test_a_body_slower_than_body_min_rate_is_cut(strict_gateway: ServedApp) -> None:
    body = chat_of_length(20_000)
    # 200 bytes/s: the body's clock is 1 s + 0.2 s per second sent, so it runs out at 1.25 s.
    closed = await hold_open(strict_gateway.port, [request_head(len(body)), *at_rate(body, 200)])
    assert closed is not None, "a trickled body was never cut"
    assert 1.0 <= closed.after <= 1.25 + SLACK
    assert closed.answer.startswith(b"HTTP/1.1 408 ") and b"body did not arrive in time" in closed.answer


async def test_a_body_at_a_fair_rate_takes_as_long_as_it_needs(strict_gateway: ServedApp) -> None:
    body = chat_of_length(12_500)
    # 5,000 bytes/s for 2.5 s: past body_timeout, but each 1,000 bytes buys a second.
    closed = await hold_open(strict_gateway.port, [request_head(len(body)), *at_rate(body, 5_000)])
    assert closed is not None and closed.answer.startswith(b"HTTP/1.1 200 "), closed
    assert closed.after >= 2.3  # the whole body was sent before the answer, and the connection idled after it


async def test_hundreds_of_slow_and_idle_clients_are_all_cut_while_others_are_served(strict_gateway: ServedApp) -> None:
    port = strict_gateway.port
    body = chat_of_length(20_000)
    clients = (
        [hold_open(port, list(slow_headers(port))) for _ in range(100)]
        + [hold_open(port, [request_head(len(body)), *at_rate(body, 100)]) for _ in range(50)]
        + [hold_open(port) for _ in range(100)]
        + [hold_open(port, [request_head(len(CHAT)) + CHAT]) for _ in range(50)]
    )
    started = time.monotonic()
    *closings, statuses = await asyncio.gather(*clients, chats_meanwhile(strict_gateway.url, 2.0))
    assert all(closed is not None for closed in closings), f"{closings.count(None)} of {len(closings)} never cut"
    assert time.monotonic() - started <= 1.25 + SLACK + 1  # the slowest to be cut: the 100 B/s bodies, at 1.11 s
    assert len(statuses) >= 5 and set(statuses) == {200}


@pytest.fixture()
def capped_gateway(gateway_config: GatewayConfig) -> Iterator[ServedApp]:
    limits = {"max_connections": 5, "header_timeout": 10.0, "usage_ledger": False}
    server = gateway_config.server.model_copy(update=limits)
    with ServedApp(create_app(gateway_config.model_copy(update={"server": server})), server=server) as served:
        yield served


async def test_a_connection_past_max_connections_is_answered_503_and_those_open_are_still_served(
    capped_gateway: ServedApp,
) -> None:
    held = [await asyncio.open_connection("127.0.0.1", capped_gateway.port) for _ in range(5)]
    try:
        await asyncio.sleep(0.2)  # accepted by the server
        with httpx.Client(base_url=capped_gateway.url) as http:
            refused = http.post("/v1/chat/completions", content=CHAT, headers=JSON)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "too_many_connections"
        assert refused.headers["retry-after"] == "1" and refused.headers["connection"] == "close"

        reader, writer = held[0]  # a connection from before the cap was reached
        writer.write(request_head(len(CHAT)) + CHAT)
        assert (await asyncio.wait_for(reader.read(65536), 5)).startswith(b"HTTP/1.1 200 ")

        for _, other in held[1:]:
            other.close()
        await asyncio.sleep(0.3)  # the server sees them go
        with httpx.Client(base_url=capped_gateway.url) as http:
            assert http.post("/v1/chat/completions", content=CHAT, headers=JSON).status_code == 200
    finally:
        for _, writer in held:
            writer.close()


def test_the_open_file_limit_fits_the_connection_cap() -> None:
    assert open_file_shortfall(100) is None  # a small cap always fits (the limit is raised if need be)
    assert "ulimit -n" in (open_file_shortfall(10**9) or "")
