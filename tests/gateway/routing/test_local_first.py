"""``routing: local_first`` on real sockets: the tiny random Llama in the gateway, a fake hosted upstream beside it.

The local engine takes ``max_running`` requests; the next overflow to the
hosted deployment, and requests come back to the engine once it drains.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from transformers import PreTrainedTokenizerBase

from gateway.app import create_app
from gateway.config import LocalFirstConfig, parse_config
from gateway.errors import ConfigError
from gateway.routing.local_first import room
from local_engine.async_engine import EngineStats
from tests.local_engine.tiny import random_llama
from tests.providers.local.conftest import VOCAB, wait_ready
from tests.support.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServedApp

CONFIG = """
server: {{usage_ledger: false}}
router: {{retries: {{attempts: 1}}}}
providers:
  engine: {{type: local, model: "{model}", dtype: float32, kv_cache_bytes: {kv_bytes}, block_size: 4}}
  hosted: {{type: custom, base_url: "{hosted}/v1", api_key: sk-test-local-first}}
models:
  chat:
    routing: local_first
    local_first: {{max_running: 2, max_waiting: {max_waiting}}}
    deployments:
      - {{provider: engine, model: tiny}}
      - {{provider: hosted, model: gpt-4o-mini}}
"""
PER_BLOCK = 2 * 2 * 4 * 2 * 16 * 4  # k+v, layers, block, kv heads, head dim, float32
CONTEXT = 4096
# Thousands of steps (seconds on the tiny model, more on a loaded machine): busy for as long as a test holds it.
ENDLESS = {"model": "chat", "stream": True, "max_tokens": CONTEXT - 64, "ignore_eos": True, "temperature": 0,
           "messages": [{"role": "user", "content": "go on"}]}  # fmt: skip
SHORT = {"model": "chat", "max_tokens": 4, "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def hosted() -> Iterator[ServedApp]:
    with ServedApp(FakeOpenAI()) as served:
        yield served


def served(model: Path | str, hosted: ServedApp, max_waiting: int = 0) -> ServedApp:
    yaml = CONFIG.format(model=model, kv_bytes=PER_BLOCK * CONTEXT, hosted=hosted.url, max_waiting=max_waiting)
    return ServedApp(create_app(parse_config(yaml, environ={})))


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer: PreTrainedTokenizerBase) -> Path:
    """The tiny random Llama with a long context, for streams that last."""
    directory = tmp_path_factory.mktemp("tiny-llama-4k")
    random_llama(VOCAB, context=CONTEXT, tokenizer=smollm2_tokenizer).save_pretrained(directory)
    smollm2_tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def gateway(tiny_model_dir: Path, hosted: ServedApp) -> Iterator[str]:
    with served(tiny_model_dir, hosted) as app:
        wait_ready(app.url)
        yield app.url


def route(response: httpx.Response) -> tuple[str, str]:
    return response.headers["x-switchyard-provider"], response.headers["x-switchyard-route-reason"]


class Held:
    """A local stream past its first event, left open (its line iterator kept: dropping it would close the stream)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()

    async def aclose(self) -> None:
        await self.lines.aclose()
        await self.response.aclose()


async def held_streams(client: httpx.AsyncClient, count: int) -> list[Held]:
    """``count`` local streams past their first event, left open."""
    streams = []
    for _ in range(count):
        response = await client.send(client.build_request("POST", "/v1/chat/completions", json=ENDLESS), stream=True)
        assert route(response) == ("engine", "local")
        held = Held(response)
        await anext(held.lines)
        streams.append(held)
    return streams


async def drained(client: httpx.AsyncClient) -> None:
    """Until the engine has nothing running (the streams' cancellation has reached it)."""
    idle = ('switchyard_engine_requests_running{provider="engine"} 0.0', 'switchyard_engine_requests_waiting{provider="engine"} 0.0',
            'switchyard_deployment_in_flight{deployment="tiny",model="chat",provider="engine"} 0.0')  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        metrics = (await client.get("/metrics")).text
        if all(line in metrics for line in idle):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the engine did not drain")


def test_overflows_while_the_engine_is_full_and_comes_back_when_it_drains(gateway: str) -> None:
    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=gateway, timeout=60) as client:
            assert route(await client.post("/v1/chat/completions", json=SHORT)) == ("engine", "local")
            streams = await held_streams(client, 2)
            for _ in range(3):
                overflow = await client.post("/v1/chat/completions", json=SHORT)
                assert overflow.status_code == 200, overflow.text
                assert route(overflow) == ("hosted", "local_full")
            for stream in streams:
                await stream.aclose()
            await drained(client)
            assert route(await client.post("/v1/chat/completions", json=SHORT)) == ("engine", "local")
            metrics = (await client.get("/metrics")).text
            assert 'switchyard_route_decisions_total{model="chat",reason="local_full"} 3.0' in metrics

    asyncio.run(scenario())


def test_a_burst_puts_exactly_max_running_on_the_engine(gateway: str) -> None:
    """Requests arriving together each see the ones routed before them (the count is raised before the call)."""

    async def burst(client: httpx.AsyncClient) -> list[str]:
        requests = [client.send(client.build_request("POST", "/v1/chat/completions", json=ENDLESS), stream=True)
                    for _ in range(6)]  # fmt: skip
        responses = await asyncio.gather(*requests)
        try:
            return sorted(response.headers["x-switchyard-provider"] for response in responses)
        finally:
            for response in responses:
                await response.aclose()

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=gateway, timeout=60) as client:
            for _ in range(5):
                await drained(client)
                assert await burst(client) == ["engine", "engine", "hosted", "hosted", "hosted", "hosted"]

    asyncio.run(scenario())


def test_a_request_on_the_engine_is_never_moved(gateway: str) -> None:
    """Held streams keep answering from the engine while the requests after them overflow."""

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=gateway, timeout=60) as client:
            await drained(client)
            streams = await held_streams(client, 2)
            assert route(await client.post("/v1/chat/completions", json=SHORT))[0] == "hosted"
            for stream in streams:
                lines = [await anext(stream.lines) for _ in range(20)]
                assert all(line.startswith("data: {") for line in lines if line)  # still the engine's chunks
                await stream.aclose()

    asyncio.run(scenario())


def test_max_waiting_lets_requests_queue_on_the_engine(tiny_model_dir: Path, hosted: ServedApp) -> None:
    with served(tiny_model_dir, hosted, max_waiting=1) as app:
        wait_ready(app.url)

        async def scenario() -> None:
            async with httpx.AsyncClient(base_url=app.url, timeout=60) as client:
                streams = await held_streams(client, 2)
                queued = await client.post("/v1/chat/completions", json=SHORT)  # the engine's max_num_seqs is 64: it runs
                assert route(queued) == ("engine", "local_queued")
                for stream in streams:
                    await stream.aclose()
                await drained(client)
                # A burst: max_running at once, max_waiting past them, the rest to the hosted deployment.
                requests = [client.send(client.build_request("POST", "/v1/chat/completions", json=ENDLESS), stream=True)
                            for _ in range(6)]  # fmt: skip
                responses = await asyncio.gather(*requests)
                try:
                    reasons = sorted(response.headers["x-switchyard-route-reason"] for response in responses)
                finally:
                    for response in responses:
                        await response.aclose()
                assert reasons == ["local", "local", "local_full", "local_full", "local_full", "local_queued"]

        asyncio.run(scenario())


def test_an_engine_that_failed_to_load_sends_everything_to_the_hosted_deployment(
    tmp_path: Path, hosted: ServedApp
) -> None:
    with served(tmp_path / "no-such-model", hosted) as app:
        wait_ready(app.url)
        response = httpx.post(f"{app.url}/v1/chat/completions", json=SHORT, timeout=30)
        assert response.status_code == 200 and route(response) == ("hosted", "local_not_ready")


def test_local_first_needs_a_local_deployment() -> None:
    yaml = """
providers: {hosted: {type: custom, base_url: "http://127.0.0.1:9/v1"}}
models: {chat: {routing: local_first, deployments: [{provider: hosted, model: m}]}}
"""
    with pytest.raises(ConfigError, match="local_first needs a deployment on a `type: local` provider"):
        parse_config(yaml, environ={})


LIMITS = LocalFirstConfig(max_running=2, max_waiting=1)


@pytest.mark.parametrize(
    ("in_flight", "stats", "expected"),
    [
        (0, None, "local_not_ready"),
        (0, EngineStats(), "local"),
        (1, EngineStats(running=1, kv_blocks_total=100, kv_blocks_used=10), "local"),
        (2, EngineStats(running=2, kv_blocks_total=100, kv_blocks_used=10), "local_queued"),
        (3, EngineStats(running=2, waiting=1, kv_blocks_total=100), "local_full"),
        # The engine's counters lag a burst by a step: the in-flight count alone decides.
        (2, EngineStats(running=0, kv_blocks_total=100), "local_queued"),
        (3, EngineStats(running=0, kv_blocks_total=100), "local_full"),
        # The KV cache nearly full: a new sequence would preempt a running one.
        (1, EngineStats(running=1, waiting=0, kv_blocks_total=100, kv_blocks_used=95), "local_kv_full"),
        # The engine queues already (its max_num_seqs, or KV blocks): only max_waiting lets one more in.
        (1, EngineStats(running=1, waiting=1, kv_blocks_total=100), "local_queued"),
        (0, EngineStats(running=0, waiting=3, kv_blocks_total=100), "local_queued"),
    ],
)
def test_room(in_flight: int, stats: EngineStats | None, expected: str) -> None:
    assert room(in_flight, stats, LIMITS) == expected
