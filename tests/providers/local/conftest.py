"""A tiny random Llama with SmolLM2's tokenizer, saved as a model directory, served by a gateway."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest
from transformers import PreTrainedTokenizerBase

from gateway.app import create_app
from gateway.config import parse_config
from tests.local_engine.tiny import random_llama
from tests.conftest import TINY_VOCAB
from tests.support.servers import ServedApp

VOCAB = TINY_VOCAB


LOCAL_YAML = """
server: {{usage_ledger: false}}
router: {{retries: {{attempts: 1}}}}
providers:
  engine: {{type: local, model: "{model}", dtype: float32, kv_cache_bytes: {kv_bytes}, block_size: 4}}
  encoder: {{type: local, model: all-minilm-l6-v2}}
models:
  tiny: {{deployments: [{{provider: engine, model: tiny}}]}}
  minilm: {{deployments: [{{provider: encoder, model: all-minilm-l6-v2}}]}}
"""


@pytest.fixture(scope="session")
def local_gateway(tiny_model_dir: Path) -> Iterator[ServedApp]:
    per_block = 2 * 2 * 4 * 2 * 16 * 4  # k+v, layers, block, kv heads, head dim, float32
    config = parse_config(LOCAL_YAML.format(model=tiny_model_dir, kv_bytes=per_block * 512), environ={})
    with ServedApp(create_app(config)) as served:
        yield served


@pytest.fixture()
def local_client(local_gateway: ServedApp) -> openai.OpenAI:
    client = openai.OpenAI(base_url=f"{local_gateway.url}/v1", api_key="none", max_retries=0, timeout=60)
    wait_ready(local_gateway.url)
    return client


@contextmanager
def tiny_1k_gateway(tmp_path_factory: pytest.TempPathFactory, tokenizer: PreTrainedTokenizerBase,
                    server: str = "{usage_ledger: false}") -> Iterator[str]:
    """The tiny random Llama with a 1024-token context (the generic tool text alone takes ~250), served; its URL once loaded."""
    directory: Path = tmp_path_factory.mktemp("tiny-llama-1k")
    random_llama(VOCAB, context=1024, tokenizer=tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    per_block = 2 * 2 * 4 * 2 * 16 * 4  # k+v, layers, block, kv heads, head dim, float32
    yaml = f"""
server: {server}
router: {{retries: {{attempts: 1}}}}
providers:
  engine: {{type: local, model: "{directory}", dtype: float32, kv_cache_bytes: {per_block * 1024}, block_size: 4}}
models:
  tiny: {{deployments: [{{provider: engine, model: tiny}}]}}
"""
    with ServedApp(create_app(parse_config(yaml, environ={}))) as served:
        wait_ready(served.url)
        yield served.url


def wait_ready(url: str, timeout: float = 60) -> None:
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/health/ready").json()["status"] != "loading":
            return
        time.sleep(0.05)
    raise TimeoutError("the local model did not load")
