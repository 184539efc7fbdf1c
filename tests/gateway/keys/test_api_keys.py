"""Client API keys: 401 without a known key, 403 for a model the key may not use, 429 past its rpm."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx
import openai
import pytest

from gateway.app import create_app
from gateway.config import ConfigError, GatewayConfig, parse_config
from tests.conftest import GATEWAY_YAML
from tests.support.servers import ServedApp

TEAM_KEY = "sk-team-a-0123456789"
CI_KEY = "sk-ci-abcdef"
HI = [{"role": "user", "content": "hi"}]

KEYS_YAML = f"""
  api_keys:
    - {{key: "${{TEAM_KEY}}", name: team-a, models: [gpt-test], rpm: 3}}
    - {{key_sha256: {hashlib.sha256(CI_KEY.encode()).hexdigest()}, name: ci, models: ["*"]}}
"""


@pytest.fixture(scope="module")
def keyed_gateway(gateway_config: GatewayConfig) -> Iterator[str]:
    environ = {"FAKE_URL": "http://unused", "FAKE_KEY": "x", "WRONG_KEY": "y", "TEAM_KEY": TEAM_KEY}
    # The shared test config, with keys: same providers (the fake upstream), same models.
    text = GATEWAY_YAML.replace("router:\n", "server:\n" + KEYS_YAML + "router:\n", 1)
    config = parse_config(text, environ=environ)
    config = config.model_copy(update={"providers": gateway_config.providers})
    with ServedApp(create_app(config)) as served:
        yield served.url


def client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def test_a_missing_or_wrong_key_is_401(keyed_gateway: str) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        client(keyed_gateway, "sk-wrong").chat.completions.create(model="gpt-test", messages=HI)
    assert caught.value.code == "invalid_api_key"
    missing = httpx.post(f"{keyed_gateway}/v1/chat/completions", json={"model": "gpt-test", "messages": HI})
    assert missing.status_code == 401 and "didn't provide an API key" in missing.json()["error"]["message"]
    assert httpx.get(f"{keyed_gateway}/v1/models").status_code == 401
    assert httpx.get(f"{keyed_gateway}/health").status_code == 200  # probes need no key


def test_bearer_and_api_key_headers_are_both_accepted(keyed_gateway: str) -> None:
    assert client(keyed_gateway, CI_KEY).chat.completions.create(model="gpt-test", messages=HI).choices
    response = httpx.post(f"{keyed_gateway}/v1/embeddings", headers={"api-key": CI_KEY}, json={"model": "embed-test", "input": "x"})
    assert response.status_code == 200


def test_a_key_sees_and_calls_only_its_models(keyed_gateway: str) -> None:
    team = client(keyed_gateway, TEAM_KEY)
    assert [m.id for m in team.models.list()] == ["gpt-test"]
    assert len(client(keyed_gateway, CI_KEY).models.list().data) > 1
    with pytest.raises(openai.NotFoundError):
        team.models.retrieve("embed-test")
    with pytest.raises(openai.PermissionDeniedError) as caught:
        team.embeddings.create(model="embed-test", input="x")
    assert caught.value.param == "model" and "team-a" in caught.value.message


def test_past_its_rpm_a_key_gets_429_with_openais_headers(keyed_gateway: str) -> None:
    team = client(keyed_gateway, TEAM_KEY)
    remaining = []
    for _ in range(3):  # rpm 3: a burst of 3, then one every 20 s
        raw = team.chat.completions.with_raw_response.create(model="gpt-test", messages=HI)
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
    assert remaining == [2, 1, 0]
    with pytest.raises(openai.RateLimitError) as caught:
        team.chat.completions.create(model="gpt-test", messages=HI)
    headers = caught.value.response.headers
    assert caught.value.code == "rate_limit_exceeded"
    assert 19 <= int(headers["retry-after"]) <= 21
    assert headers["x-ratelimit-remaining-requests"] == "0"
    # Another key has its own limit.
    assert client(keyed_gateway, CI_KEY).chat.completions.create(model="gpt-test", messages=HI).choices


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ('{key: "a", key_sha256: "' + "0" * 64 + '", name: x}', "exactly one of"),
        ("{name: x}", "exactly one of"),
        ('{key: "a", name: x, tpm: 0}', "greater than or equal to 1"),
        ('{key: "a", name: admin}', "names the admin keys"),
        ('{key: "a", name: x, models: [nope]}', "'nope' is not a model here"),
    ],
)
def test_bad_keys_fail_at_load(entry: str, problem: str) -> None:
    text = f"server:\n  api_keys:\n    - {entry}\nmodels: {{m: {{deployments: [{{provider: p, model: m}}]}}}}\n"
    text += "providers: {p: {type: custom, base_url: 'http://x/v1'}}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environ={})
    assert any(problem in line for line in caught.value.problems), caught.value.problems


def test_cors_preflight_needs_no_key_and_the_answer_exposes_our_headers(gateway_config: GatewayConfig) -> None:
    environ = {"FAKE_URL": "http://unused", "FAKE_KEY": "x", "WRONG_KEY": "y", "TEAM_KEY": TEAM_KEY}
    text = GATEWAY_YAML.replace("router:\n", "server:\n  cors_origins: [https://app.example]\n" + KEYS_YAML + "router:\n", 1)
    config = parse_config(text, environ=environ).model_copy(update={"providers": gateway_config.providers})
    with ServedApp(create_app(config)) as served:
        origin = {"Origin": "https://app.example"}
        preflight = httpx.options(
            f"{served.url}/v1/chat/completions",
            headers={**origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"},
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        answer = httpx.post(f"{served.url}/v1/chat/completions", headers={**origin, "Authorization": f"Bearer {CI_KEY}"},
                            json={"model": "gpt-test", "messages": HI})  # fmt: skip
        assert answer.status_code == 200
        assert "x-switchyard-provider" in answer.headers["access-control-expose-headers"]
        other = httpx.options(f"{served.url}/v1/models", headers={"Origin": "https://evil.example",
                                                                 "Access-Control-Request-Method": "GET"})  # fmt: skip
        assert "access-control-allow-origin" not in other.headers
