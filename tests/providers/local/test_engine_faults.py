"""The served engine survives a step that raises: that step's requests get a 500, the engine serves on."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from gateway.app import create_app
from gateway.config import parse_config
from providers import build_providers
from providers.local.provider import LocalProvider
from tests.local_engine.test_step_failure import POISON, fail_steps_with
from tests.providers.local.conftest import wait_ready
from tests.support.servers import ServedApp


@pytest.fixture()
def served_engine(tiny_model_dir: Path) -> Iterator[tuple[ServedApp, LocalProvider]]:
    config = parse_config(
        f"""
server: {{usage_ledger: false}}
router: {{retries: {{attempts: 1}}}}
providers:
  engine: {{type: local, model: "{tiny_model_dir}", dtype: float32, kv_cache_bytes: 4194304, block_size: 4}}
models:
  tiny: {{deployments: [{{provider: engine, model: tiny}}]}}
""",
        environ={},
    )
    providers = build_providers(config.providers)
    with ServedApp(create_app(config, providers=providers)) as served:
        wait_ready(served.url)
        provider = providers["engine"]
        assert isinstance(provider, LocalProvider)
        yield served, provider


def test_a_failing_step_is_a_500_for_its_requests_and_the_engine_serves_on(
    served_engine: tuple[ServedApp, LocalProvider],
) -> None:
    served, provider = served_engine
    engine = provider.engine.engine  # type: ignore[union-attr]
    assert engine is not None
    faults = fail_steps_with(engine, POISON)
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="none", max_retries=0, timeout=60)

    # A long stream is running when the poisoned request joins its step: both are in the failed step.
    stream = client.completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=200, temperature=0, stream=True,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    chunks = iter(stream)
    next(chunks)
    with pytest.raises(openai.InternalServerError) as caught:
        client.completions.create(model="tiny", prompt=[1, 2, POISON], max_tokens=4)
    error = caught.value.body
    assert isinstance(error, dict) and error["type"] == "api_error" and "serves on" in error["message"]
    assert "Traceback" not in str(error) and "injected" not in str(error)
    with pytest.raises(openai.APIError):  # the stream ends with an error event in OpenAI's shape
        for _ in chunks:
            pass
    assert faults() >= 1

    # The engine goes on: new requests, concurrent ones too, are answered, and every block came back.
    answers: list[str] = []
    threads = [
        threading.Thread(
            target=lambda: answers.append(
                client.completions.create(model="tiny", prompt="Hello", max_tokens=5, temperature=0).choices[0].text
            )
        )
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 4 and len(set(answers)) == 1
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    assert provider.state == "ready"
