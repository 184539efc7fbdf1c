"""The official openai SDK against the gateway on a real port, in front of a fake upstream."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from gateway.config import GatewayConfig
from tests.conftest import PLANTED_KEY
from tests.support.fakes.openai_upstream import FakeOpenAI
from tests.support.openai_spec.spec import validate
from tests.support.servers import ServedApp

HELLO = [{"role": "user", "content": "hello there"}]


def test_chat_completion(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=HELLO)
    completion = raw.parse()

    assert completion.choices[0].message.content == "You said: hello there"
    validate("CreateChatCompletionResponse", raw.http_response.json())
    assert raw.headers["x-switchyard-provider"] == "fake"
    assert raw.headers["x-switchyard-model"] == "fake-model"
    assert len(raw.headers["x-request-id"]) >= 16
    sent = fake.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["model"] == "fake-model"
    assert sent.headers["authorization"] == f"Bearer {PLANTED_KEY}"


async def test_async_chat_completion(async_client: openai.AsyncOpenAI) -> None:
    completion = await async_client.chat.completions.create(model="gpt-test", messages=HELLO)
    assert completion.choices[0].message.content == "You said: hello there"
    assert completion.usage is not None and completion.usage.total_tokens > 0


def test_streamed_chat_arrives_chunk_by_chunk(client: openai.OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(model="gpt-test", messages=HELLO, stream=True) as raw:
        assert raw.headers["content-type"].startswith("text/event-stream")
        assert raw.headers["x-switchyard-provider"] == "fake"
        chunks = list(raw.parse())

    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
    deltas = [chunk.choices[0].delta.content for chunk in chunks]
    assert deltas == ["", "You ", "said: ", "hello ", "there", None]
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_async_stream_with_usage(async_client: openai.AsyncOpenAI) -> None:
    stream = await async_client.chat.completions.create(
        model="gpt-test", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "You said: hello there"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_upstream_connection_is_reused_after_a_stream(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    for _ in range(3):
        assert len(list(client.chat.completions.create(model="gpt-test", messages=HELLO, stream=True))) == 6
    assert len({request.client_port for request in fake.requests}) == 1


def test_stream_is_relayed_before_the_upstream_finishes(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    # The upstream never ends this stream: chunks can only arrive if each is forwarded as it comes.
    stream = client.chat.completions.create(model="fake/endless-stream", messages=HELLO, stream=True)
    received = []
    for chunk in stream:
        received.append(chunk.choices[0].delta.content)
        if len(received) == 3:
            break
    stream.close()
    assert received == ["tick0 ", "tick1 ", "tick2 "]


def test_completions(client: openai.OpenAI) -> None:
    raw = client.completions.with_raw_response.create(model="gpt-test", prompt="once upon")
    validate("CreateCompletionResponse", raw.http_response.json())
    assert raw.parse().choices[0].text == "You said: once upon"

    pieces = [chunk.choices[0].text for chunk in client.completions.create(model="gpt-test", prompt="abc", stream=True)]
    assert "".join(pieces) == "You said: abc"


def test_embeddings(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    raw = client.embeddings.with_raw_response.create(model="embed-test", input=["a", "bb"])
    validate("CreateEmbeddingResponse", raw.http_response.json())
    response = raw.parse()
    assert [item.embedding[0] for item in response.data] == [1.0, 2.0]
    assert fake.requests[-1].body["model"] == "fake-embedder"


def test_moderations(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    raw = client.moderations.with_raw_response.create(model="moderation-test", input=["hello", "attack them"])
    validate("CreateModerationResponse", raw.http_response.json())
    assert [result.flagged for result in raw.parse().results] == [False, True]
    assert fake.requests[-1].body["model"] == "omni-moderation-latest"
    with pytest.raises(openai.BadRequestError) as caught:  # a gateway must know where to route
        client.moderations.create(input="hello")
    assert caught.value.param == "model"


def test_models(client: openai.OpenAI) -> None:
    raw = client.models.with_raw_response.list()
    validate("ListModelsResponse", raw.http_response.json())
    assert [model.id for model in raw.parse()] == ["gpt-test", "backed-up", "embed-test", "moderation-test"]

    model = client.models.retrieve("gpt-test")
    assert model.id == "gpt-test"
    direct = client.models.with_raw_response.retrieve("fake/org/some-model")
    validate("Model", direct.http_response.json())
    assert direct.parse().owned_by == "fake"


def test_unknown_fields_reach_the_upstream(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    client.chat.completions.create(
        model="gpt-test", messages=HELLO, temperature=0.3, extra_body={"top_k": 5, "repetition_penalty": 1.1}
    )
    body = fake.requests[-1].body
    assert body["top_k"] == 5 and body["repetition_penalty"] == 1.1 and body["temperature"] == 0.3


def test_provider_slash_model_addressing(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="fake/meta-llama/Llama-3.1-8B", messages=HELLO)
    assert raw.headers["x-switchyard-model"] == "meta-llama/Llama-3.1-8B"
    assert fake.requests[-1].body["model"] == "meta-llama/Llama-3.1-8B"


def test_client_request_id_is_echoed(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=HELLO, extra_headers={"x-request-id": "trace-42"}
    )
    assert raw.headers["x-request-id"] == "trace-42"


def test_next_deployment_answers_when_the_first_is_unreachable(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="backed-up", messages=HELLO)
    assert raw.headers["x-switchyard-provider"] == "fake"
    assert raw.parse().choices[0].message.content == "You said: hello there"


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_model_is_404_before_any_stream(client: openai.OpenAI, stream: bool) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=HELLO, stream=stream)
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"
    validate("ErrorResponse", caught.value.response.json())


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 3}, "temperature"),
        ({"n": 0}, "n"),
        ({"stop": 5}, "stop"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": []}, "messages"),
        ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ],
)
def test_schema_violations_are_400_naming_the_param(client: openai.OpenAI, kwargs: dict, param: str) -> None:
    arguments = {"model": "gpt-test", "messages": HELLO, **kwargs}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**arguments)
    assert caught.value.status_code == 400
    assert caught.value.param == param
    assert param in caught.value.message
    validate("ErrorResponse", caught.value.response.json())


def test_missing_required_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="embed-test", input=openai.NOT_GIVEN)  # type: ignore[arg-type]
    assert caught.value.param == "input"
    assert "Missing required parameter" in caught.value.message


@pytest.mark.parametrize(
    ("model", "error_class", "status"),
    [
        ("fake/status-400", openai.BadRequestError, 400),
        ("fake/status-404", openai.NotFoundError, 404),
        ("fake/status-422", openai.UnprocessableEntityError, 422),
        ("fake/status-500", openai.InternalServerError, 500),
        ("fake/status-503", openai.InternalServerError, 503),
        ("fake/plain-400", openai.BadRequestError, 400),
        ("fake/plain-502", openai.InternalServerError, 502),
        ("dead/anything", openai.InternalServerError, 502),
        ("impatient/slow-5", openai.InternalServerError, 504),
        ("wrong-key/fake-model", openai.AuthenticationError, 401),
    ],
)
def test_upstream_errors_keep_their_status_in_openai_shape(
    client: openai.OpenAI, model: str, error_class: type[openai.APIStatusError], status: int
) -> None:
    with pytest.raises(error_class) as caught:
        client.chat.completions.create(model=model, messages=HELLO)
    assert caught.value.status_code == status
    body = caught.value.response.json()
    validate("ErrorResponse", body)
    assert PLANTED_KEY not in caught.value.response.text
    assert PLANTED_KEY[::-1] not in caught.value.response.text


def test_upstream_error_message_and_param_pass_through(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="fake/status-400", messages=HELLO)
    assert caught.value.body == {
        "message": "fake upstream error 400", "type": "invalid_request_error", "param": "messages", "code": None
    }

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="fake/plain-400", messages=HELLO)
    assert caught.value.body["message"] == "upstream exploded"


def test_rate_limit_keeps_retry_after(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="fake/retry-after-7", messages=HELLO)
    assert caught.value.response.headers["retry-after"] == "7"


def test_echoed_provider_key_is_masked(client: openai.OpenAI) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="wrong-key/fake-model", messages=HELLO)
    assert "Incorrect API key provided: [redacted]" in caught.value.message


def test_stream_errors_before_the_first_byte_are_plain_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="fake/status-503", messages=HELLO, stream=True)
    assert caught.value.status_code == 503
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="fake/json-for-stream", messages=HELLO, stream=True)
    assert caught.value.status_code == 502


def test_a_stream_that_breaks_raises_in_the_client(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="fake/broken-stream", messages=HELLO, stream=True)
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk)
    assert len(received) == 2
    assert "before it finished" in caught.value.message


def test_unknown_routes_and_methods(gateway: ServedApp, client: openai.OpenAI) -> None:
    with httpx.Client(base_url=gateway.url) as http:
        unknown = http.post("/v1/nothing-here", json={})
        assert unknown.status_code == 404
        validate("ErrorResponse", unknown.json())
        assert unknown.json()["error"]["message"] == "Invalid URL (POST /v1/nothing-here)"

        wrong_method = http.delete("/v1/chat/completions")
        assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
        validate("ErrorResponse", wrong_method.json())

        truncated_json = b'{"model": "gpt-test", "messages": ['
        malformed = http.post("/v1/chat/completions", content=truncated_json, headers={"content-type": "application/json"})
        assert malformed.status_code == 400
        validate("ErrorResponse", malformed.json())
        assert "could not parse the JSON body" in malformed.json()["error"]["message"]

        not_object = http.post("/v1/chat/completions", json=["a"])
        assert not_object.status_code == 400

    with pytest.raises(openai.NotFoundError) as caught:  # image variations: not served (docs/media.md serves the rest)
        client.images.create_variation(image=("cat.png", b"\x89PNG"), model="gpt-test")
    assert caught.value.code == "unsupported_endpoint"


def test_json_answers_are_sized_not_chunked(gateway: ServedApp) -> None:
    body = {"model": "gpt-test", "messages": HELLO}
    with httpx.Client(base_url=gateway.url) as http:
        for response in (http.post("/v1/chat/completions", json=body), http.post("/v1/chat/completions", json={})):
            assert response.headers["content-length"] == str(len(response.content))
            assert "transfer-encoding" not in response.headers


def test_tokenize_a_hosted_model_with_tiktoken(gateway: ServedApp) -> None:
    import tiktoken

    answer = httpx.post(f"{gateway.url}/v1/tokenize", json={"model": "gpt-test", "prompt": "hello world"}).json()
    assert answer["tokens"] == tiktoken.get_encoding("cl100k_base").encode("hello world")  # an unknown family: cl100k
    assert answer["count"] == 2 and answer["max_model_len"] is None
    text = httpx.post(f"{gateway.url}/v1/detokenize", json={"model": "gpt-test", "tokens": answer["tokens"]}).json()
    assert text == {"prompt": "hello world"}
    chat = httpx.post(f"{gateway.url}/v1/tokenize", json={"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 400 and chat.json()["error"]["param"] == "messages"
    unknown = httpx.post(f"{gateway.url}/v1/tokenize", json={"model": "nope", "prompt": "x"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


def test_a_body_past_max_body_bytes_is_a_413_read_no_further(gateway_config: GatewayConfig) -> None:
    from gateway.app import create_app

    server = gateway_config.server.model_copy(update={"max_body_bytes": 4096, "usage_ledger": False})
    with ServedApp(create_app(gateway_config.model_copy(update={"server": server}))) as small:
        big = {"model": "gpt-test", "messages": [{"role": "user", "content": "x" * 5000}]}
        response = httpx.post(f"{small.url}/v1/chat/completions", json=big)
        assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"

        def chunks() -> Iterator[bytes]:  # a chunked body, with no content-length to check up front
            yield b'{"model": "gpt-test", "messages": [{"role": "user", "content": "'
            for _ in range(100):
                yield b"x" * 1000
            yield b'"}]}'

        streamed = httpx.post(f"{small.url}/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        assert httpx.post(f"{small.url}/v1/chat/completions", json={**big, "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
