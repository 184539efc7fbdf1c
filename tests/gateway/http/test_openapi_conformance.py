"""schemathesis against the gateway served on a real port: no server error, no status /openapi.json does not list.

Every operation of the gateway's own description is fuzzed (schemathesis'
examples, coverage and fuzzing phases; seeded, deterministic, a bounded
number of cases each, well under two minutes in all) through a gateway in
front of ``CannedUpstream``, which answers anything with a valid answer:
so a 5xx here is the gateway's own doing. The coverage phase also sends
methods the description does not list, which must be 405s with ``Allow``.

Checks: schemathesis' ``not_a_server_error``, ``status_code_conformance``,
``unsupported_method``, ``allow_header_conformance`` and
``response_headers_conformance``; and, stricter than the second, that the
status is listed by number (the relay's ``4XX``/``5XX`` stand for what an
upstream answers, and this upstream answers neither).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (the test extra)")

from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.config import SchemathesisConfig  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    allow_header_conformance,
    response_headers_conformance,
    status_code_conformance,
    unsupported_method,
)

from gateway.app import create_app  # noqa: E402
from gateway.config import GatewayConfig, parse_config  # noqa: E402
from tests.support.fakes.asgi import read_request, serve_lifespan  # noqa: E402
from tests.support.servers import ServedApp  # noqa: E402

GATEWAY_YAML = """
server: {usage_ledger: false}
router:
  retries: {attempts: 1}
  cooldown: {failures: 1000000}
providers:
  canned: {type: custom, base_url: "${CANNED_URL}/v1"}
models:
  gpt-test:
    deployments: [{provider: canned, model: canned-model}]
"""
SCHEMATHESIS = {
    "seed": 20261201,
    "generation": {"deterministic": True, "max-examples": 25, "database": "none"},
    "phases": {"stateful": {"enabled": False}},
    "request-timeout": 10,
}
USAGE = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}


class CannedUpstream:
    """An OpenAI-compatible upstream that gives every request a valid answer, whatever it asked."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        _, raw = await read_request(scope, receive)
        try:
            request = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            request = {}
        streamed = isinstance(request, dict) and request.get("stream") is True
        endpoint = scope["path"].removeprefix("/v1/")
        if streamed and endpoint in ("chat/completions", "completions"):
            await self._stream(send, endpoint)
            return
        answers = {
            "chat/completions": {"id": "c", "object": "chat.completion", "created": 0, "model": "canned-model",
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                              "finish_reason": "stop"}], "usage": USAGE},
            "completions": {"id": "c", "object": "text_completion", "created": 0, "model": "canned-model",
                            "choices": [{"index": 0, "text": "ok", "finish_reason": "stop", "logprobs": None}],
                            "usage": USAGE},
            "embeddings": {"object": "list", "model": "canned-model", "usage": USAGE,
                           "data": [{"object": "embedding", "index": 0, "embedding": [0.0, 1.0]}]},
            "moderations": {"id": "m", "model": "canned-model",
                            "results": [{"flagged": False, "categories": {}, "category_scores": {}}]},
        }  # fmt: skip
        answer = answers.get(endpoint, answers["chat/completions"])
        await self._send(send, 200, b"application/json", orjson.dumps(answer))

    async def _stream(self, send: Any, endpoint: str) -> None:
        if endpoint == "chat/completions":
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "canned-model",
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": "ok"},
                                  "finish_reason": "stop"}]}  # fmt: skip
        else:
            chunk = {"id": "c", "object": "text_completion", "created": 0, "model": "canned-model",
                     "choices": [{"index": 0, "text": "ok", "finish_reason": "stop", "logprobs": None}]}  # fmt: skip
        body = b"data: " + orjson.dumps(chunk) + b"\n\ndata: [DONE]\n\n"
        await self._send(send, 200, b"text/event-stream", body)

    @staticmethod
    async def _send(send: Any, status: int, content_type: bytes, body: bytes) -> None:
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def gateway_config(upstream_url: str) -> GatewayConfig:
    return parse_config(GATEWAY_YAML, environ={"CANNED_URL": upstream_url})


def description() -> dict[str, Any]:
    """The gateway's /openapi.json, asked of the app in-process: schemathesis needs it when tests are collected."""

    async def ask() -> dict[str, Any]:
        transport = httpx.ASGITransport(app=create_app(gateway_config("http://unused")))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            answer: dict[str, Any] = (await client.get("/openapi.json")).json()
            return answer

    return asyncio.run(ask())


@pytest.fixture(scope="module")
def conformance_gateway() -> Iterator[ServedApp]:
    with ServedApp(CannedUpstream()) as upstream:
        config = gateway_config(upstream.url)
        with ServedApp(create_app(config), server=config.server) as served:
            assert httpx.get(f"{served.url}/openapi.json").json() == description()  # what is fuzzed is what is served
            yield served


schema = schemathesis.openapi.from_dict(description(), config=SchemathesisConfig.from_dict(SCHEMATHESIS))


@schema.hook("map_body")
def mostly_a_configured_model(context: Any, body: Any) -> Any:
    """Send most bodies to a model that exists, so that they get past routing to the upstream."""
    if isinstance(body, dict) and isinstance(body.get("model"), str) and len(body["model"]) % 3:
        return {**body, "model": "gpt-test"}
    return body


@schema.parametrize()
def test_every_answer_is_listed_and_none_is_a_server_error(case: Any, conformance_gateway: ServedApp) -> None:
    response = case.call(base_url=conformance_gateway.url)
    case.validate_response(
        response,
        checks=[not_a_server_error, status_code_conformance, unsupported_method, allow_header_conformance,
                response_headers_conformance],
    )  # fmt: skip
    documented = case.operation.definition.raw["responses"]
    if case.method.upper() == case.operation.method.upper():
        assert str(response.status_code) in documented, (
            f"{case.method} {case.formatted_path} answered {response.status_code}, "
            f"which its description lists only as a range: {sorted(documented)}"
        )
