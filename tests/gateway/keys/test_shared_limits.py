"""Two gateway processes behind one real Redis enforce one limit and one budget."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.conftest import PLANTED_KEY
from tests.support.fakes.openai_upstream import FakeOpenAI
from tests.support.processes import GatewayProcess
from tests.support.servers import ServedApp

HI = [{"role": "user", "content": "hello there"}]


def test_two_replicas_share_one_rpm_and_one_budget(
    tmp_path: Path, fake_upstream: tuple[FakeOpenAI, ServedApp], redis_url: str
) -> None:
    config = tmp_path / "providers.yaml"
    config.write_text(
        f"""
server:
  redis_url: {redis_url}
  api_keys:
    - {{key: "${{RPM_KEY}}", name: shared-rpm, rpm: 10}}
    - {{key: "${{BUDGET_KEY}}", name: shared-budget, budget_tokens: 40}}
providers:
  fake: {{type: custom, base_url: "{fake_upstream[1].url}/v1", api_key: "${{FAKE_KEY}}"}}
models:
  chat: {{deployments: [{{provider: fake, model: fake-model}}]}}
"""
    )
    env = {"FAKE_KEY": PLANTED_KEY, "RPM_KEY": "sk-rpm", "BUDGET_KEY": "sk-budget"}
    with GatewayProcess(config, env) as one, GatewayProcess(config, env) as two:
        replicas = [httpx.Client(base_url=one.url), httpx.Client(base_url=two.url)]

        def call(index: int, key: str) -> httpx.Response:
            headers = {"Authorization": f"Bearer {key}"}
            return replicas[index % 2].post("/v1/chat/completions", json={"model": "chat", "messages": HI}, headers=headers)

        # rpm 10: a burst of 10 in all, whichever replica they reach; one more every 6 s.
        statuses = [call(index, "sk-rpm").status_code for index in range(20)]
        assert statuses.count(200) == 10 and statuses.count(429) == 10
        assert statuses[:10] == [200] * 10

        # A budget spent through one replica is spent for the other.
        spent = 0
        while spent < 40:
            answer = call(0, "sk-budget")
            assert answer.status_code == 200
            spent += answer.json()["usage"]["total_tokens"]
        time.sleep(0.2)  # the charge reaches Redis just after the answer
        refused = call(1, "sk-budget")  # the other replica's first call with this key
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
        for client in replicas:
            client.close()
