"""vLLM's operational endpoints on the engine in this process: /reset_prefix_cache, /sleep, /wake_up, /is_sleeping.

The tiny random Llama, served by uvicorn on a real port, with a hosted
deployment (a fake) after it, so that a sleeping engine's requests are seen
falling back.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from gateway.app import create_app
from gateway.config import parse_config
from tests.conftest import PLANTED_KEY
from tests.providers.local.conftest import wait_ready
from tests.support.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServedApp

ADMIN = "sk-admin-engine-endpoints-0123456789"
CLIENT = "sk-client-engine-endpoints-0123456789"
# Long enough to fill several 4-token blocks, so a second request finds them cached.
PROMPT = [{"role": "user", "content": "Tell me about the history of the paged KV cache in great detail please."}]


@pytest.fixture()
def gateway(tiny_model_dir: Path, fake_upstream: tuple[FakeOpenAI, ServedApp]) -> Any:
    per_block = 2 * 2 * 4 * 2 * 16 * 4  # k+v, layers, block, kv heads, head dim, float32
    config = {
        "server": {"usage_ledger": False, "admin_keys": [ADMIN], "api_keys": [{"key": CLIENT, "name": "client"}]},
        "router": {"retries": {"attempts": 1}},
        "providers": {
            "engine": {"type": "local", "model": str(tiny_model_dir), "dtype": "float32",
                       "kv_cache_bytes": per_block * 256, "block_size": 4},
            "hosted": {"type": "custom", "base_url": f"{fake_upstream[1].url}/v1", "api_key": PLANTED_KEY},
        },
        "models": {
            "tiny": {"deployments": [{"provider": "engine", "model": "tiny"}]},
            "either": {"routing": "local_first", "deployments": [
                {"provider": "engine", "model": "tiny"}, {"provider": "hosted", "model": "gpt-test"}]},
        },
    }  # fmt: skip
    with ServedApp(create_app(parse_config(yaml.safe_dump(config), environ={}))) as served:
        wait_ready(served.url)
        yield served


def admin(url: str, method: str, path: str, key: str = ADMIN) -> httpx.Response:
    return httpx.request(method, f"{url}{path}", headers={"authorization": f"Bearer {key}"}, timeout=30)


def cached_tokens(client: openai.OpenAI) -> int:
    answer = client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=2, temperature=0)
    assert answer.usage is not None and answer.usage.prompt_tokens_details is not None
    return answer.usage.prompt_tokens_details.cached_tokens or 0


def test_reset_prefix_cache_forgets_what_a_repeated_prompt_found(gateway: ServedApp) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=CLIENT, max_retries=0, timeout=60)
    cached_tokens(client)
    assert cached_tokens(client) > 0  # the second time, its blocks were there
    answer = admin(gateway.url, "POST", "/reset_prefix_cache")
    assert answer.status_code == 200 and answer.json() == {"engines": {"engine": "reset"}}
    assert cached_tokens(client) == 0


def test_sleep_releases_the_cache_refuses_and_falls_back_then_wake_up_serves(gateway: ServedApp) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=CLIENT, max_retries=0, timeout=60)
    before = client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=4, temperature=0)
    assert admin(gateway.url, "POST", "/sleep").json() == {"engines": {"engine": "sleeping"}}
    assert admin(gateway.url, "GET", "/is_sleeping").json() == {"is_sleeping": True, "engines": {"engine": True}}
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=4)
    assert refused.value.status_code == 503 and "sleeping" in refused.value.message
    # A model with another deployment is answered by it; the process stays ready, the deployment says why.
    fallen = client.chat.completions.with_raw_response.create(model="either", messages=PROMPT, max_tokens=4)
    assert fallen.headers["x-switchyard-provider"] == "hosted"
    ready = httpx.get(f"{gateway.url}/health/ready")
    assert ready.status_code == 200 and ready.json()["local_models"]["engine"]["state"] == "sleeping"
    assert refused.value.code == "model_sleeping"
    # vLLM's tags: the weights never left (nothing to take back); an unknown tag is named.
    assert admin(gateway.url, "POST", "/wake_up?tags=weights").json() == {"engines": {"engine": "sleeping"}}
    unknown = admin(gateway.url, "POST", "/wake_up?tags=gpu")
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "tags"
    assert admin(gateway.url, "POST", "/wake_up?tags=kv_cache").json() == {"engines": {"engine": "awake"}}
    assert admin(gateway.url, "GET", "/is_sleeping").json()["is_sleeping"] is False
    after = client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=4, temperature=0)
    assert after.choices[0].message.content == before.choices[0].message.content  # a fresh cache, the same answer


def test_a_sleep_level_not_built_is_refused_by_name(gateway: ServedApp) -> None:
    refused = admin(gateway.url, "POST", "/sleep?level=2")
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "level"
    assert "not built" in refused.json()["error"]["message"]
    assert admin(gateway.url, "GET", "/is_sleeping").json()["is_sleeping"] is False  # nothing was done
    assert admin(gateway.url, "POST", "/sleep?level=2", key="sk-not-admin-000000000000").status_code == 401


def test_sleep_and_reset_are_refused_while_a_request_runs(gateway: ServedApp) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=CLIENT, max_retries=0, timeout=60)
    started = threading.Event()
    texts: list[str] = []

    def stream() -> None:
        events = client.chat.completions.create(
            model="tiny", messages=PROMPT, max_tokens=200, temperature=0, stream=True,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        for chunk in events:
            started.set()
            texts.append(chunk.choices[0].delta.content or "" if chunk.choices else "")

    neighbour = threading.Thread(target=stream)
    neighbour.start()
    assert started.wait(30)
    for path in ("/sleep", "/reset_prefix_cache"):
        busy = admin(gateway.url, "POST", path)
        assert busy.status_code == 409 and busy.json()["error"]["code"] == "engine_busy"
    neighbour.join(60)
    assert len(texts) > 100  # the running stream was not touched
    assert admin(gateway.url, "POST", "/sleep").status_code == 200  # once it finished
    admin(gateway.url, "POST", "/wake_up")


def test_the_endpoints_need_an_admin_key(gateway: ServedApp) -> None:
    assert admin(gateway.url, "POST", "/sleep", key=CLIENT).status_code == 403
    assert httpx.post(f"{gateway.url}/sleep").status_code == 401
    assert admin(gateway.url, "GET", "/is_sleeping").json()["is_sleeping"] is False  # nothing slept
    unknown = admin(gateway.url, "POST", "/sleep?provider=nope")
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "provider"
