"""The in-process client, end to end: against Switchyard itself, and against provider fakes for their quirks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from providers import (
    AsyncOpenAICompatibleAPI,
    MissingAPIKey,
    NotOffered,
    OpenAICompatibleAPI,
)
from tests.support.fakes.provider_fakes import ProviderFake, fakes
from tests.support.servers import ServedApp

HI = [{"role": "user", "content": "hello there"}]


@pytest.fixture()
def switchyard(gateway: ServedApp) -> dict[str, str]:
    """A client config for the test gateway (tests/conftest.py), as `provider: custom`."""
    return {"provider": "custom", "base_url": f"{gateway.url}/v1", "default_model": "gpt-test", "max_retries": 0}


@pytest.fixture(scope="module")
def groq_and_mistral() -> Iterator[dict[str, tuple[ProviderFake, str]]]:
    apps = fakes()
    with ServedApp(apps["groq"]) as groq, ServedApp(apps["mistral"]) as mistral:
        yield {"groq": (apps["groq"], groq.url + "/openai/v1"), "mistral": (apps["mistral"], mistral.url + "/v1")}


def test_chat_stream_complete_embed_and_models_through_switchyard(switchyard: dict[str, str]) -> None:
    api = OpenAICompatibleAPI(switchyard)
    assert api.chat(HI) == "You said: hello there"
    assert "".join(api.chat(HI, stream=True)) == "You said: hello there"  # type: ignore[arg-type]
    completion = api.chat_completion(HI, temperature=0.2)
    assert completion.model == "fake-model" and completion.usage is not None
    assert api.complete("hi", model="gpt-test").choices[0].text == "You said: hi"
    embedding = api.create_embedding(["a", "b"], model="embed-test")
    assert len(embedding.data) == 2
    assert "gpt-test" in api.list_models()
    assert api.validate_credentials()
    assert [r.flagged for r in api.moderate(["hi", "attack"], model="moderation-test")] == [False, True]


async def test_the_async_twin_does_the_same(switchyard: dict[str, str]) -> None:
    api = AsyncOpenAICompatibleAPI(switchyard)
    assert await api.chat(HI) == "You said: hello there"
    pieces = [piece async for piece in await api.chat(HI, stream=True)]  # type: ignore[union-attr]
    assert "".join(pieces) == "You said: hello there" and len(pieces) > 1
    assert "gpt-test" in await api.list_models()
    assert await api.validate_credentials()


def test_fallback_configs_are_tried_in_order(switchyard: dict[str, str]) -> None:
    dead = {"provider": "custom", "base_url": "http://127.0.0.1:9/v1", "default_model": "x", "max_retries": 0, "timeout": 2}
    api = OpenAICompatibleAPI({**dead, "fallback": [switchyard]})
    assert api.chat(HI) == "You said: hello there"


def test_a_missing_key_names_the_variable_to_set() -> None:
    with pytest.raises(MissingAPIKey, match="GROQ_API_KEY"):
        OpenAICompatibleAPI({"provider": "groq"}, environ={})
    api = OpenAICompatibleAPI({"provider": "groq"}, environ={"GROQ_API_KEY": "from-env"})
    assert api._targets.first.api_key == "from-env"


def test_the_parameter_map_applies_in_process_too(groq_and_mistral: dict[str, tuple[ProviderFake, str]]) -> None:
    groq, groq_url = groq_and_mistral["groq"]
    api = OpenAICompatibleAPI({"provider": "groq", "base_url": groq_url, "api_key": groq.key, "default_model": "llama"})
    assert api.chat(HI, logprobs=True, n=1) == "groq"  # the fake refuses logprobs: it was dropped
    mistral, mistral_url = groq_and_mistral["mistral"]
    api = OpenAICompatibleAPI({"provider": "mistral", "base_url": mistral_url, "api_key": mistral.key, "default_model": "m"})
    assert api.chat(HI, seed=7, max_completion_tokens=5) == "mistral"
    assert mistral.requests[-1]["body"]["random_seed"] == 7 and mistral.requests[-1]["body"]["max_tokens"] == 5
    strict = OpenAICompatibleAPI({"provider": "groq", "base_url": groq_url, "api_key": groq.key, "default_model": "l", "unsupported_params": "reject"})
    with pytest.raises(Exception, match="does not support the parameter `logprobs`"):
        strict.chat(HI, logprobs=True)


def test_credentials_are_checked_without_an_exception(groq_and_mistral: dict[str, tuple[ProviderFake, str]]) -> None:
    groq, url = groq_and_mistral["groq"]
    assert OpenAICompatibleAPI({"provider": "groq", "base_url": url, "api_key": groq.key}).validate_credentials()
    assert not OpenAICompatibleAPI({"provider": "groq", "base_url": url, "api_key": "wrong"}).validate_credentials()


def test_what_a_provider_does_not_offer_says_so(groq_and_mistral: dict[str, tuple[ProviderFake, str]]) -> None:
    groq, url = groq_and_mistral["groq"]
    api = OpenAICompatibleAPI({"provider": "groq", "base_url": url, "api_key": groq.key, "default_model": "l"})
    with pytest.raises(NotOffered, match="'groq' does not offer /v1/embeddings"):
        api.create_embedding("hi", model="e")
    with pytest.raises(NotOffered, match="moderations"):
        api.moderate("hi")


def test_count_tokens_uses_the_bundled_encoding_offline() -> None:
    api = OpenAICompatibleAPI({"provider": "custom", "base_url": "http://127.0.0.1:9/v1", "default_model": "gpt-4"})
    assert api.count_tokens("hello world") == 2
    assert api.count_tokens([{"role": "user", "content": "hello world"}]) == 3 + 3 + 1 + 2


def test_azure_deployment_urls_with_a_key_or_an_entra_token() -> None:
    apps = fakes()
    keyed = apps["azure"]
    token = ProviderFake("azure", "", auth_value="Bearer {key}", azure_api_version="2024-10-21", key="entra-token")
    with ServedApp(keyed) as keyed_server, ServedApp(token) as token_server:
        api = OpenAICompatibleAPI({"provider": "azure", "base_url": keyed_server.url, "api_key": keyed.key, "default_model": "my-gpt"})
        assert api.chat(HI) == "azure"
        assert keyed.requests[-1]["path"] == "/openai/deployments/my-gpt/chat/completions"
        config = {"provider": "azure", "base_url": token_server.url, "api_key": token.key, "auth": "bearer", "default_model": "d"}
        assert OpenAICompatibleAPI(config).chat(HI) == "azure"


def test_encodings_follow_the_model_family_offline(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from providers import tokens

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    tokens.encoding_for.cache_clear()
    tokens._encoding.cache_clear()
    try:
        assert tokens.encoding_for("gpt-4o").name == "o200k_base"
        assert tokens.encoding_for("gpt-4o").encode("hello world") == [24912, 2375]  # o200k_base's ids
        assert tokens.encoding_for("gpt-4").encode("hello world") == [15339, 1917]  # cl100k_base's ids
        assert tokens.encoding_for("some-local-model").name == "cl100k_base"
    finally:
        tokens.encoding_for.cache_clear()
        tokens._encoding.cache_clear()


# Prompt tokens the OpenAI API reported for single-message requests, as recorded by
# openai-messages-token-helper 0.1.4 (tests/messages.py, checked against the API by its
# tests/verify_openai.py): (message, gpt-4 count, gpt-4o count).
API_COUNTS = [
    ({"role": "system", "content": "You are a bot."}, 12, 12),
    ({"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English."}, 25, 24),
    ({"role": "system", "content": "á"}, 8, 8),
    ({"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."}, 20, 20),
    ({"role": "user", "content": "Hello, how are you?"}, 13, 13),
    ({"role": "assistant", "content": "Yes, there is a dress code at Contoso Electronics. Look sharp! [employee_handbook-1.pdf]"}, 30, 30),
]


@pytest.mark.parametrize(("message", "gpt4", "gpt4o"), API_COUNTS)
def test_chat_prompts_count_as_the_api_counted_them(message: dict[str, str], gpt4: int, gpt4o: int) -> None:
    from providers.tokens import count_messages

    assert count_messages([message], "gpt-4") == gpt4
    assert count_messages([message], "gpt-4o") == gpt4o
