"""The two browser checks over HTTP: POST bodies must be declared JSON (415), Hosts must name loopback (421).

tests/gateway/http/middleware/test_browser_attacks.py shows the same against a real browser.
"""

from __future__ import annotations

import socket

import httpx
import pytest

from gateway.app import create_app
from gateway.config import ConfigError, GatewayConfig, parse_config
from gateway.http.middleware.browser_guard import host_check_for, host_name, is_json
from tests.support.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServedApp

CHAT = b'{"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}'
JSON_PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/moderations", "/v1/tokenize",
              "/v1/detokenize"]  # fmt: skip


@pytest.mark.parametrize("content_type", [None, "text/plain", "text/plain;charset=UTF-8",
                                          "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                          "application/jsonx", "application/json-patch+json"])  # fmt: skip
def test_a_post_whose_body_is_not_declared_json_is_a_415(gateway: ServedApp, fake: FakeOpenAI,
                                                         content_type: str | None) -> None:  # fmt: skip
    headers = {"content-type": content_type} if content_type else {}
    with httpx.Client(base_url=gateway.url) as http:
        for path in JSON_PATHS:
            answer = http.post(path, content=CHAT, headers=headers)
            assert answer.status_code == 415, (path, answer.text)
            assert answer.json()["error"] == {
                "message": f"POST {path} takes a JSON body: send `Content-Type: application/json`.",
                "type": "invalid_request_error", "param": None, "code": "unsupported_media_type",
            }  # fmt: skip
            assert answer.headers["accept"] == "application/json"
    assert fake.requests == []


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"])
def test_json_in_any_spelling_is_served(gateway: ServedApp, content_type: str) -> None:
    answer = httpx.post(f"{gateway.url}/v1/chat/completions", content=CHAT, headers={"content-type": content_type})
    assert answer.status_code == 200


def test_only_post_bodies_of_served_endpoints_are_checked(gateway: ServedApp) -> None:
    with httpx.Client(base_url=gateway.url) as http:
        assert http.post("/v1/images/variations", content=b"x", headers={"content-type": "text/plain"}).status_code == 404
        assert http.get("/v1/models").status_code == 200
        assert http.get("/v1/chat/completions").status_code == 405


@pytest.mark.parametrize("host", ["evil.test", "evil.test:8000", "127.0.0.1.nip.io", "localhost.evil.test",
                                  "[::2]", "10.0.0.1", "", "bad host", "127.0.0.1:x"])  # fmt: skip
def test_a_host_that_is_not_loopback_is_a_421_on_every_path(gateway: ServedApp, fake: FakeOpenAI, host: str) -> None:
    with httpx.Client(base_url=gateway.url, headers={"host": host}) as http:
        for answer in (http.post("/v1/chat/completions", content=CHAT, headers={"content-type": "application/json"}),
                       http.get("/v1/models"), http.get("/health")):  # fmt: skip
            assert answer.status_code == 421, (host, answer.text)
            assert answer.json()["error"]["code"] == "host_not_allowed"
    assert fake.requests == []


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:{port}", "localhost:{port}", "LOCALHOST", "localhost.",
                                  "[::1]:{port}", "[::1]", "127.0.0.2:80"])  # fmt: skip
def test_loopback_hosts_with_any_port_are_served(gateway: ServedApp, host: str) -> None:
    answer = httpx.get(f"{gateway.url}/v1/models", headers={"host": host.format(port=gateway.port)})
    assert answer.status_code == 200


def test_a_request_without_a_host_is_served(gateway: ServedApp) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as client:  # HTTP/1.0 needs none
        client.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        assert client.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_allowed_hosts_are_answered_too(gateway_config: GatewayConfig) -> None:
    server = gateway_config.server.model_copy(update={"allowed_hosts": ["gateway.internal", "[fd00::1]"],
                                                      "usage_ledger": False})  # fmt: skip
    with ServedApp(create_app(gateway_config.model_copy(update={"server": server}))) as served:
        for host, status in [("gateway.internal:8000", 200), ("Gateway.Internal", 200), ("[fd00::1]:80", 200),
                             ("localhost", 200), ("other.internal", 421)]:  # fmt: skip
            assert httpx.get(f"{served.url}/v1/models", headers={"host": host}).status_code == status, host


def test_the_host_check_is_on_for_loopback_binds_and_for_any_with_allowed_hosts() -> None:
    assert host_check_for("127.0.0.1", []) is not None
    assert host_check_for("localhost", []) is not None
    assert host_check_for("::1", []) is not None
    assert host_check_for("0.0.0.0", []) is None  # the names clients use are not known
    assert host_check_for("0.0.0.0", ["api.example.com"]) is not None
    assert host_check_for("127.0.0.1", ["*"]) is None


def test_host_names_are_parsed_as_browsers_send_them() -> None:
    assert host_name(b"Example.COM:8000") == "example.com"
    assert host_name(b"[::1]:8000") == "::1"
    assert host_name(b"localhost.") == "localhost"
    assert host_name(b"[::1") is None and host_name(b"a:b") is None and host_name(b"[::1]x") is None
    assert is_json(b"application/json;charset=utf-8") and not is_json(b"text/json") and not is_json(None)


def test_allowed_hosts_must_be_host_names() -> None:
    for entry in ["http://api.example.com", "api.example.com:8000", "api.example.com/v1", ""]:
        with pytest.raises(ConfigError) as caught:
            parse_config(f"server: {{allowed_hosts: ['{entry}']}}\n", environ={})
        assert "allowed_hosts" in str(caught.value), entry
    assert parse_config("server: {allowed_hosts: [api.example.com, '*']}\n", environ={}).server.allowed_hosts
