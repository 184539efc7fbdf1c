"""A store that fails under a route: an OpenAI-shaped 500, logged once, and the connection serves on.

The failure is real: the ledger's and the kept responses' tables are dropped
from under a running gateway in a PostgreSQL database of its own.
"""

from __future__ import annotations

import http.client
import json
import logging
import uuid
from urllib.parse import urlsplit

import psycopg
import pytest
import yaml

from gateway.app import create_app
from gateway.config import parse_config
from gateway.errors import InternalError
from tests.conftest import PLANTED_KEY
from tests.support.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServedApp

ADMIN_KEY = "sk-admin-store-failures-0123456789"


@pytest.fixture()
def database_url(postgres_url: str) -> str:
    """A database of this test's own in the session's PostgreSQL."""
    name = f"broken_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    parts = urlsplit(postgres_url)
    return parts._replace(path=f"/{name}").geturl()


def test_a_failed_store_is_a_500_and_the_connection_serves_on(
    fake_upstream: tuple[FakeOpenAI, ServedApp], database_url: str, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    config = {
        "server": {"database_url": database_url, "admin_keys": [ADMIN_KEY], "data_dir": str(tmp_path)},
        "providers": {"fake": {"type": "custom", "base_url": f"{fake_upstream[1].url}/v1", "api_key": PLANTED_KEY}},
        "models": {"m": {"deployments": [{"provider": "fake", "model": "gpt-test"}]}},
    }
    with ServedApp(create_app(parse_config(yaml.safe_dump(config), environ={}))) as served:
        connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
        headers = {"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"}

        def call(method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
            connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
            answer = connection.getresponse()
            return answer.status, json.loads(answer.read())

        status, answer = call("POST", "/v1/responses", {"model": "m", "input": "hi"})
        assert status == 200
        assert call("GET", f"/v1/responses/{answer['id']}")[0] == 200
        assert call("GET", "/v1/usage")[0] == 200
        with psycopg.connect(database_url, autocommit=True) as side:
            side.execute("DROP TABLE usage_records")
            side.execute("DROP TABLE responses")
        caplog.clear()
        for path in ("/v1/usage", f"/v1/responses/{answer['id']}"):
            status, body = call("GET", path)  # on the same connection as every call before it
            assert status == 500
            assert body["error"]["message"] == InternalError().message  # the gateway's 500, nothing of the store's
            assert "usage_records" not in json.dumps(body) and "responses" not in body["error"]["message"]
        assert call("GET", "/v1/models")[0] == 200  # the connection was not closed under the client
        connection.close()
    server_errors = [r for r in caplog.records if r.name.startswith("uvicorn") and r.levelno >= logging.ERROR]
    assert server_errors == []  # no second traceback from the server
    ours = [r for r in caplog.records if r.name == "gateway.app" and r.levelno >= logging.ERROR]
    assert len(ours) == 2  # each failure logged once, by the gateway's handler
