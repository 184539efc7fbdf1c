"""A pooled connection the upstream closed as it was reused: the request is sent again, once, on a new one.

The upstream here is a plain socket server on 127.0.0.1 that answers each
request and closes the connection at once, as a server closing an idle
keep-alive connection does. The client blocks its event loop a moment
after each answer, so the close has arrived, unread, when the next request
takes the pooled connection. What happens then is a race in the kernel and
the event loop: aiohttp finds it cannot write the body (or the write gets
EPIPE), which the gateway sends again because the upstream never read it;
or the write lands and the upstream's close answers it (ServerDisconnected,
ECONNRESET), which it does not, since a server that read the request and
died looks the same. So the test asserts the first kind never reaches the
caller, and no request is ever seen twice.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from yarl import URL

from providers.config import HostedProviderConfig
from providers.errors import UpstreamUnreachable
from providers.http_upstream import HTTPUpstream

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


@pytest.fixture
def closing_upstream() -> Iterator[tuple[str, list[bytes]]]:
    listener = socket.create_server(("127.0.0.1", 0))
    bodies: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                received = b""
                while b"\r\n\r\n" not in received and (chunk := connection.recv(65536)):
                    received += chunk
                head, _, body = received.partition(b"\r\n\r\n")
                if not head:
                    continue
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
                while len(body) < length:
                    body += connection.recv(65536)
                bodies.append(body)
                connection.sendall(ANSWER)  # then closed: HTTP/1.1 said keep-alive, the server changed its mind

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", bodies
    listener.close()


async def test_a_request_the_upstream_never_read_is_sent_once_more(
    closing_upstream: tuple[str, list[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    url, bodies = closing_upstream
    upstream = HTTPUpstream("closing", HostedProviderConfig(type="custom", base_url=url))
    answered = 0
    try:
        for number in range(20):
            try:
                response, answer = await upstream.post(URL(f"{url}/v1/chat/completions"), f"request-{number}".encode())
                answered += response.status == 200 and answer == b"{}"
            except UpstreamUnreachable:
                pass  # the other kind of the race: the upstream may have read it, so it is the router's to retry
            time.sleep(0.05)  # the event loop blocked: the upstream's close arrives before the next request
    finally:
        await upstream.aclose()
    failures = [record.getMessage() for record in caplog.records if record.name == "providers.http_upstream"]
    assert not [f for f in failures if "Can not write request body" in f or "Broken pipe" in f], failures
    assert len(bodies) == len(set(bodies)), "a request was sent twice to an upstream that had read it"
    assert answered >= 10  # at least the first request on each new connection
