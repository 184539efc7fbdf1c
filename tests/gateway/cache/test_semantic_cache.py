"""Semantic mode on real sockets: the bundled all-MiniLM-L6-v2 embeds the last user message."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from gateway.app import create_app
from gateway.config import parse_config
from tests.providers.local.conftest import wait_ready
from tests.support.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServedApp

CONFIG = """
server: {{usage_ledger: false}}
router: {{retries: {{attempts: 1}}}}
providers:
  fake: {{type: custom, base_url: "{upstream}/v1", api_key: sk-fake-upstream-key}}
  encoder: {{type: local, model: all-minilm-l6-v2}}
models:
  faq:
    cache: {{mode: semantic, similarity: 0.8}}
    deployments: [{{provider: fake, model: gpt-4o-mini}}]
"""


@pytest.fixture(scope="module")
def gateway(upstream: tuple[FakeOpenAI, ServedApp]) -> Iterator[str]:
    with ServedApp(create_app(parse_config(CONFIG.format(upstream=upstream[1].url), environ={}))) as served:
        wait_ready(served.url)
        yield served.url


def ask(url: str, question: str, system: str | None = None, **extra: Any) -> Any:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    api = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    return api.chat.completions.with_raw_response.create(model="faq", messages=messages, temperature=0, **extra)  # type: ignore[arg-type]


def test_a_question_that_means_the_same_is_answered_from_the_cache(gateway: str, upstream: tuple[FakeOpenAI, ServedApp]) -> None:
    fake = upstream[0]
    calls = len(fake.requests)
    system = f"You answer geography questions. {time.monotonic_ns()}"
    first = ask(gateway, "What is the capital of France?", system)
    again = ask(gateway, "what's the capital city of France?", system)
    assert first.headers["x-switchyard-cache"] == "miss"
    assert again.headers["x-switchyard-cache"] == "hit"
    assert 0.8 <= float(again.headers["x-switchyard-cache-similarity"]) < 1
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert len(fake.requests) == calls + 1


def test_another_question_or_another_conversation_is_a_miss(gateway: str) -> None:
    system = f"You answer geography questions. {time.monotonic_ns()}"
    ask(gateway, "What is the capital of France?", system)
    assert ask(gateway, "How do I bake sourdough bread?", system).headers["x-switchyard-cache"] == "miss"
    # The same question under another system prompt, or with other parameters, is another conversation.
    assert ask(gateway, "What is the capital of France?", system + " Be brief.").headers["x-switchyard-cache"] == "miss"
    assert ask(gateway, "What is the capital of France?", system, max_tokens=7).headers["x-switchyard-cache"] == "miss"


def test_the_exact_question_is_a_hit_of_similarity_one(gateway: str) -> None:
    system = f"exact {time.monotonic_ns()}"
    ask(gateway, "Name three rivers of Europe.", system)
    again = ask(gateway, "Name three rivers of Europe.", system)
    assert again.headers["x-switchyard-cache"] == "hit" and again.headers["x-switchyard-cache-similarity"] == "1.0000"


def test_a_message_longer_than_the_embedder_reads_is_matched_exactly_only(gateway: str) -> None:
    """all-MiniLM-L6-v2 reads 256 tokens: two long messages alike at the start would embed the same."""
    system = f"contracts {time.monotonic_ns()}"
    contract = "The seller delivers the goods to the buyer's warehouse within thirty days. " * 40
    first = ask(gateway, contract + "Question: what is the delivery deadline?", system)
    other = ask(gateway, contract + "Question: who pays the shipping insurance?", system)
    assert (first.headers["x-switchyard-cache"], other.headers["x-switchyard-cache"]) == ("miss", "miss")
    assert ask(gateway, contract + "Question: who pays the shipping insurance?", system).headers["x-switchyard-cache"] == "hit"
