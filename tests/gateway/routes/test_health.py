from __future__ import annotations

from importlib import metadata

import httpx
import openai
import pytest

from tests.support.servers import ServedApp


def test_liveness_and_ping(gateway: ServedApp) -> None:
    with httpx.Client(base_url=gateway.url) as http:
        assert http.get("/health").json() == {"status": "ok"}
        assert http.get("/ping").text == "pong"


def test_readiness_reports_each_deployment_from_recent_calls(gateway: ServedApp, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="dead/x", messages=[{"role": "user", "content": "hi"}])
    with httpx.Client(base_url=gateway.url) as http:
        ready = http.get("/health/ready")
    assert ready.status_code == 200
    models = ready.json()["models"]
    assert {"gpt-test", "backed-up", "embed-test", "dead/x"} <= set(models)
    [fake] = models["gpt-test"]
    assert (fake["provider"], fake["model"], fake["state"]) == ("fake", "fake-model", "closed")
    assert fake["successes"] >= 1 and fake["latency_ms"] is not None
    [dead] = models["dead/x"]
    assert dead["failures"] == 1 and "unreachable" in dead["last_error"]


def test_docs_describe_the_request_bodies(gateway: ServedApp) -> None:
    with httpx.Client(base_url=gateway.url) as http:
        assert http.get("/docs").status_code == 200
        schema = http.get("/openapi.json").json()
    body = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    assert "messages" in schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert "ChatMessage" in schema["components"]["schemas"]


async def test_async_client_gets_the_same_error_classes(async_client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        await async_client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as caught:
        await async_client.embeddings.create(model="embed-test", input=[], encoding_format="hex")  # type: ignore[arg-type]
    assert caught.value.param == "encoding_format"
    stream = await async_client.chat.completions.create(
        model="fake/broken-stream", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass


def test_version_is_the_installed_distributions_in_vllms_shape(gateway: ServedApp) -> None:
    answer = httpx.get(f"{gateway.url}/version")
    assert answer.status_code == 200
    assert answer.json() == {"version": metadata.version("switchyard")}
    assert httpx.get(f"{gateway.url}/openapi.json").json()["info"]["version"] == metadata.version("switchyard")
