"""Each preset against a fake of its provider, through the gateway, with the official SDK."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
import yaml

from gateway.app import create_app
from gateway.config import parse_config
from providers import PRESETS
from tests.support.fakes.provider_fakes import ProviderFake, fakes
from tests.support.servers import ServedApp

HI = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]
# Every OpenAI parameter some preset maps, at a value that asks for something.
EVERYTHING = {
    "max_completion_tokens": 8, "seed": 3, "logprobs": True, "top_logprobs": 2,
    "logit_bias": {"50256": -100}, "n": 1, "user": "u1", "tools": TOOLS,
}  # fmt: skip

# What each provider's documentation says it does not take (docs/providers.md cites each).
DROPPED = {
    "groq": {"logprobs", "top_logprobs", "logit_bias"},
    "together": {"logprobs", "top_logprobs"},
    "mistral": {"logprobs", "top_logprobs", "logit_bias", "user"},
    "perplexity": {"logprobs", "top_logprobs", "logit_bias", "seed", "tools"},
    "xai": {"logit_bias"},
    "gemini": {"seed"},
}
# ... and what it takes under another name.
RENAMED = {
    "together": {"max_tokens": 8},
    "mistral": {"max_tokens": 8, "random_seed": 3},
    "deepseek": {"max_tokens": 8},
    "perplexity": {"max_tokens": 8},
    "fireworks": {"max_tokens": 8},
}
# The presets that speak OpenAI's protocol; `anthropic` is translated, and tested against its own fake (test_anthropic.py).
HOSTED = sorted(name for name, preset in PRESETS.items() if name != "custom" and not preset.local and preset.protocol == "openai")


@pytest.fixture(scope="module")
def served_fakes() -> Iterator[dict[str, tuple[ProviderFake, ServedApp]]]:
    apps = fakes()
    assert set(apps) == set(HOSTED), "every hosted preset has a fake"
    served = {name: ServedApp(app) for name, app in apps.items()}
    for server in served.values():
        server.__enter__()
    yield {name: (apps[name], served[name]) for name in apps}
    for server in served.values():
        server.__exit__(None, None, None)


@pytest.fixture(scope="module")
def client(served_fakes: dict[str, tuple[ProviderFake, ServedApp]]) -> Iterator[openai.OpenAI]:
    providers, models = {}, {}
    for name, (fake, server) in served_fakes.items():
        providers[name] = {"type": name, "base_url": server.url + fake.prefix, "api_key": fake.key}
        models[f"{name}-m"] = {"deployments": [{"provider": name, "model": f"m-{name}"}]}
        models[f"{name}-strict"] = {"deployments": [{"provider": name, "model": f"m-{name}"}], "unsupported_params": "reject"}
    models["mixed"] = {"deployments": [{"provider": "groq", "model": "llama"}, {"provider": "openai", "model": "embedder"}]}
    policies = {"content_policy_fallbacks": {"azure-m": ["openai-m"]}}
    config = parse_config(yaml.safe_dump({"providers": providers, "models": models, **policies}), environ={})
    with ServedApp(create_app(config)) as gateway:
        yield openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="client", max_retries=0)


@pytest.mark.parametrize("name", HOSTED)
def test_a_request_using_every_mapped_parameter_is_accepted(
    name: str, client: openai.OpenAI, served_fakes: dict[str, tuple[ProviderFake, ServedApp]]
) -> None:
    fake = served_fakes[name][0]
    fake.requests.clear()
    raw = client.chat.completions.with_raw_response.create(model=f"{name}-m", messages=HI, **EVERYTHING)  # type: ignore[arg-type]
    assert raw.parse().choices[0].message.content == name  # the fake took it: URL, key and fields as it wants them
    dropped = raw.headers.get("x-switchyard-dropped-params")
    assert (set(dropped.split(",")) if dropped else set()) == DROPPED.get(name, set())
    [received] = fake.requests
    sent = {k: v for k, v in received["body"].items() if k not in ("model", "messages")}
    expected = {k: v for k, v in EVERYTHING.items() if k not in DROPPED.get(name, set())}
    for old_name, new_name in (("max_completion_tokens", "max_tokens"), ("seed", "random_seed")):
        if new_name in RENAMED.get(name, {}):
            expected[new_name] = expected.pop(old_name)
    assert sent == expected


def test_reject_names_the_parameter_and_the_provider(client: openai.OpenAI, served_fakes: dict[str, tuple[ProviderFake, ServedApp]]) -> None:
    fake = served_fakes["groq"][0]
    fake.requests.clear()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="groq-strict", messages=HI, logprobs=True)
    assert caught.value.param == "logprobs" and caught.value.code == "unsupported_parameter"
    assert "'groq'" in caught.value.message
    assert not fake.requests
    # Parameters the provider takes, or takes under another name, pass under reject too.
    client.chat.completions.create(model="mistral-strict", messages=HI, seed=1, max_completion_tokens=4)


def test_an_endpoint_the_provider_lacks_is_a_400_saying_so(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="groq-m", input="hi")
    assert caught.value.code == "unsupported_endpoint" and "'groq'" in caught.value.message
    # A model whose deployments differ: the ones that lack the endpoint are skipped, not failed.
    raw = client.embeddings.with_raw_response.create(model="mixed", input="hi")
    assert raw.headers["x-switchyard-provider"] == "openai" and raw.headers["x-switchyard-attempts"] == "1"
    with pytest.raises(openai.BadRequestError) as moderation:
        client.moderations.create(model="together-m", input="hi")
    assert moderation.value.code == "unsupported_endpoint" and "/v1/moderations" in moderation.value.message


@pytest.mark.parametrize(
    ("name", "params", "status"),
    [("groq", {"logprobs": True}, 400), ("groq", {"n": 2}, 400), ("mistral", {"user": "u"}, 422),
     ("perplexity", {"tools": TOOLS}, 400), ("xai", {"logit_bias": {"1": 1}}, 400)],
)  # fmt: skip
def test_the_fakes_refuse_what_their_provider_refuses(
    served_fakes: dict[str, tuple[ProviderFake, ServedApp]], name: str, params: dict[str, object], status: int
) -> None:
    # Sent straight to the fake, without the gateway's map: so the tests above can fail.
    fake, server = served_fakes[name]
    direct = openai.OpenAI(base_url=server.url + fake.prefix, api_key=fake.key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        direct.chat.completions.create(model="m", messages=HI, **params)  # type: ignore[arg-type]
    assert caught.value.status_code == status


def test_provider_error_bodies_arrive_in_openais_shape(client: openai.OpenAI) -> None:
    # Mistral refuses a field outside its schema with FastAPI's {"detail": [...]}.
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.chat.completions.create(model="mistral-m", messages=HI, extra_body={"top_k": 5})
    assert "Extra inputs are not permitted" in caught.value.message
    assert caught.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    # xAI answers {"code": "<text>", "error": "<text>"}, here for a bad key.
    with pytest.raises(openai.BadRequestError) as bad_key:
        client.chat.completions.create(model="xai-m", messages=HI, extra_body={"x-test-bad-key": True})
    assert "Incorrect API key" in bad_key.value.message


def test_azure_content_filter_is_a_content_policy_refusal(client: openai.OpenAI) -> None:
    blocked = [{"role": "user", "content": "something forbidden"}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="azure-strict", messages=blocked)
    assert caught.value.code == "content_filter" and caught.value.type == "invalid_request_error"
    assert caught.value.param == "prompt"
    raw = client.chat.completions.with_raw_response.create(model="azure-m", messages=blocked)  # its policy chain
    assert raw.headers["x-switchyard-fallback-chain"] == "azure-m,openai-m"
    assert raw.parse().choices[0].message.content == "openai"


def test_a_streamed_answer_names_what_was_dropped_too(served_fakes: dict[str, tuple[ProviderFake, ServedApp]]) -> None:
    fake, server = served_fakes["groq"]
    config = parse_config(
        yaml.safe_dump({
            "providers": {"groq": {"type": "groq", "base_url": server.url + fake.prefix, "api_key": fake.key}},
            "models": {"g": {"deployments": [{"provider": "groq", "model": "llama"}]}},
        }),
        environ={},
    )  # fmt: skip
    with ServedApp(create_app(config)) as gateway:
        streaming = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="client", max_retries=0)
        with streaming.chat.completions.with_streaming_response.create(model="g", messages=HI, stream=True, logit_bias={"1": 1}) as response:
            assert response.headers["x-switchyard-dropped-params"] == "logit_bias"


def test_azure_with_an_entra_id_token_sends_it_as_bearer() -> None:
    fake = ProviderFake("azure", "", auth_value="Bearer {key}", azure_api_version="2024-10-21", key="entra-token")
    with ServedApp(fake) as upstream:
        provider = {"type": "azure", "base_url": upstream.url, "api_key": fake.key, "auth": "bearer"}
        config = parse_config(
            yaml.safe_dump({"providers": {"az": provider}, "models": {"a": {"deployments": [{"provider": "az", "model": "dep"}]}}}),
            environ={},
        )
        with ServedApp(create_app(config)) as gateway:
            client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="client", max_retries=0)
            assert client.chat.completions.create(model="a", messages=HI).choices[0].message.content == "azure"
    assert fake.requests[-1]["path"] == "/openai/deployments/dep/chat/completions"
