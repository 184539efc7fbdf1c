"""A pooled connection the upstream closed as it was reused: the request is sent again, once, on a new one.

The upstream here is a plain socket server on 127.0.0.1 that answers each
request and closes the connection at once, as a server closing an idle
keep-alive connection does: the client's next request takes the pooled
connection before it has seen the close.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from yarl import URL

from providers.config import HostedProviderConfig
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
                time.sleep(0.02)  # the client waits for the answer, so it reads the answer and the close together
                connection.sendall(ANSWER)  # then closed: HTTP/1.1 said keep-alive, the server changed its mind

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", bodies
    listener.close()


async def test_a_request_on_a_connection_closed_under_it_is_sent_once_more(closing_upstream: tuple[str, list[bytes]]) -> None:
    url, bodies = closing_upstream
    upstream = HTTPUpstream("closing", HostedProviderConfig(type="custom", base_url=url))
    try:
        for number in range(6):
            response, answer = await upstream.post(URL(f"{url}/v1/chat/completions"), f"request-{number}".encode())
            assert response.status == 200 and answer == b"{}"
    finally:
        await upstream.aclose()
    assert bodies == [f"request-{number}".encode() for number in range(6)]  # each once: none lost, none twice
