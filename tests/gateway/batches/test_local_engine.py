"""A batch on the local engine: the tiny random Llama answers each line, greedily, as it answers the same request live."""

from __future__ import annotations

import time
from pathlib import Path

import openai
import orjson

from gateway.app import create_app
from gateway.config import parse_config
from tests.providers.local.conftest import wait_ready
from tests.support.servers import ServedApp

CONFIG = """
server: {{data_dir: "{data}", batch_concurrency: 3}}
providers:
  engine: {{type: local, model: "{model}", dtype: float32, kv_cache_bytes: 1048576, block_size: 4}}
models:
  tiny: {{deployments: [{{provider: engine, model: tiny}}]}}
"""


def test_a_batch_runs_on_the_local_engine(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = parse_config(CONFIG.format(data=tmp_path, model=tiny_model_dir), environ={})
    prompts = [f"count to {n}" for n in range(6)]
    lines = b"".join(
        orjson.dumps({"custom_id": f"p{n}", "method": "POST", "url": "/v1/completions",
                      "body": {"model": "tiny", "prompt": prompt, "max_tokens": 5, "temperature": 0}}) + b"\n"
        for n, prompt in enumerate(prompts)
    )  # fmt: skip
    with ServedApp(create_app(config), server=config.server) as served:
        wait_ready(served.url)
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="none", max_retries=0)
        source = client.files.create(file=("prompts.jsonl", lines), purpose="batch")
        batch = client.batches.create(input_file_id=source.id, endpoint="/v1/completions", completion_window="24h")
        deadline = time.monotonic() + 30
        while (done := client.batches.retrieve(batch.id)).status != "completed" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert done.status == "completed" and done.request_counts.completed == 6  # type: ignore[union-attr]
        output = {line["custom_id"]: line for line in map(orjson.loads, client.files.content(done.output_file_id).read().splitlines())}  # type: ignore[arg-type]
        live = client.completions.create(model="tiny", prompt=prompts[4], max_tokens=5, temperature=0)
    assert set(output) == {f"p{n}" for n in range(6)}
    answer = output["p4"]["response"]["body"]
    assert answer["object"] == "text_completion" and answer["usage"]["completion_tokens"] == 5
    assert answer["choices"][0]["text"] == live.choices[0].text


ADMIN = "sk-admin-batches-local-0123456789"
WAITING_CONFIG = """
server: {{data_dir: "{data}", batch_concurrency: 2, admin_keys: [{admin}]}}
providers:
  engine: {{type: local, model: "{model}", dtype: float32, kv_cache_bytes: 1048576, block_size: 4}}
models:
  tiny: {{deployments: [{{provider: engine, model: tiny}}]}}
"""


def test_a_batch_waits_for_a_sleeping_engine_and_for_its_model_to_load_after_a_restart(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    import httpx

    config = parse_config(WAITING_CONFIG.format(data=tmp_path, model=tiny_model_dir, admin=ADMIN), environ={})
    lines = b"".join(orjson.dumps({"custom_id": f"p{n}", "method": "POST", "url": "/v1/completions",
                                   "body": {"model": "tiny", "prompt": f"line {n}", "max_tokens": 3}}) + b"\n"
                     for n in range(4))  # fmt: skip
    admin = {"authorization": f"Bearer {ADMIN}"}
    with ServedApp(create_app(config), server=config.server) as served:
        wait_ready(served.url)
        assert httpx.post(f"{served.url}/sleep", headers=admin).status_code == 200
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key=ADMIN, max_retries=0)
        source = client.files.create(file=("prompts.jsonl", lines), purpose="batch")
        batch = client.batches.create(input_file_id=source.id, endpoint="/v1/completions", completion_window="24h")
        time.sleep(1.5)  # its lines are answered 503 model_sleeping, and wait
        asleep = client.batches.retrieve(batch.id)
        assert asleep.status == "in_progress" and asleep.request_counts.failed == 0  # type: ignore[union-attr]
    # A graceful stop while they wait sends nothing more; at the next start they go before the model has loaded.
    with ServedApp(create_app(config), server=config.server) as served:
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key=ADMIN, max_retries=0)
        deadline = time.monotonic() + 30
        while (done := client.batches.retrieve(batch.id)).status != "completed" and time.monotonic() < deadline:
            time.sleep(0.05)
    assert done.status == "completed", done
    assert (done.request_counts.completed, done.request_counts.failed) == (4, 0)  # type: ignore[union-attr]
