"""Tokenizer work runs beside the engine's step loop: a huge prompt costs its own request, never the neighbours'.

Chat templates, prompt encoding and /v1/tokenize and /v1/detokenize run on
the model's tokenizer thread, so a multi-megabyte prompt or a bad token id
neither stalls nor breaks the streams the engine is decoding.
"""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from tests.providers.local.test_bad_input import (  # noqa: F401
    NEIGHBOUR,
    beside_a_neighbour,
    neighbour_alone,
    streamed_text,
)
from tests.support.servers import ServedApp

HUGE = "lorem ipsum dolor sit amet " * 150_000  # 4 MB of text: seconds of tokenizing


def test_a_stream_keeps_decoding_while_a_huge_prompt_is_tokenized(
    local_gateway: ServedApp, local_client: openai.OpenAI
) -> None:
    stream = local_client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Go on."}], stream=True, temperature=0, max_tokens=200,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    chunks = iter(stream)
    next(chunks)
    window: dict[str, float] = {}

    def tokenize_huge() -> None:
        window["sent"] = time.monotonic()
        answer = httpx.post(f"{local_gateway.url}/v1/tokenize", json={"model": "tiny", "prompt": HUGE}, timeout=120)
        window["answered"] = time.monotonic()
        window["count"] = answer.json()["count"]

    worker = threading.Thread(target=tokenize_huge)
    worker.start()
    arrivals = [time.monotonic() for _ in chunks]
    worker.join()
    assert window["count"] > 100_000
    during = [t for t in arrivals if window["sent"] < t < window["answered"]]
    # On the engine's thread the tokenizing would have held every step: no chunk while it ran.
    assert len(during) >= 10, (len(during), len(arrivals))


def test_a_huge_chat_is_refused_for_its_length_and_the_neighbour_is_unchanged(
    local_client: openai.OpenAI, neighbour_alone: str  # noqa: F811
) -> None:
    # Seconds of templating and encoding, longer than the neighbour's whole stream: no overlap check here.
    chunks = iter(local_client.chat.completions.create(stream=True, **NEIGHBOUR))  # type: ignore[call-overload]
    first = next(chunks)
    with pytest.raises(openai.BadRequestError) as caught:
        local_client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": HUGE}])
    assert caught.value.code == "context_length_exceeded" and caught.value.param == "messages"
    assert (first.choices[0].delta.content or "") + streamed_text(chunks) == neighbour_alone


def test_detokenizing_bad_ids_is_a_400_and_the_neighbour_is_unchanged(
    local_gateway: ServedApp, local_client: openai.OpenAI, neighbour_alone: str  # noqa: F811
) -> None:
    for tokens in ([-1], [2**40], [2**64]):
        def detokenize() -> object:
            answer = httpx.post(f"{local_gateway.url}/v1/detokenize", json={"model": "tiny", "tokens": tokens})
            return openai.BadRequestError("refused", response=answer, body=answer.json()) if answer.status_code == 400 else answer

        answer = beside_a_neighbour(local_client, local_gateway.url, neighbour_alone, detokenize)
        assert isinstance(answer, openai.BadRequestError), answer
