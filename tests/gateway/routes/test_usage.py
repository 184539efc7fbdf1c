"""Token usage of every answer: the upstream's when it reports it, else counted here and marked estimated."""

from __future__ import annotations

import openai
import tiktoken

from tests.gateway.telemetry.test_metrics import samples, value
from tests.support.servers import ServedApp

HI = [{"role": "user", "content": "hello there"}]
# The fake answers "You said: hello there"; counted in cl100k_base, the encoding for a model tiktoken does not know.
REPLY_TOKENS = len(tiktoken.get_encoding("cl100k_base").encode("You said: hello there"))
PROMPT_TOKENS = 3 + (3 + 1 + 2)  # reply priming + (message overhead + "user" + "hello there")


def test_reported_usage_is_kept_and_not_marked(gateway: ServedApp, client: openai.OpenAI) -> None:
    before = samples(gateway.url)
    raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=HI)
    assert "x-switchyard-usage-estimated" not in raw.headers
    usage = raw.parse().usage
    assert usage is not None and usage.prompt_tokens == 7  # the fake's own figure
    after = samples(gateway.url)
    added = value(after, "switchyard_tokens_total", model="gpt-test", kind="prompt", estimated="false")
    assert added - value(before, "switchyard_tokens_total", model="gpt-test", kind="prompt", estimated="false") == 7


def test_usage_an_upstream_did_not_report_is_counted_and_marked(gateway: ServedApp, client: openai.OpenAI) -> None:
    before = samples(gateway.url)
    raw = client.chat.completions.with_raw_response.create(model="fake/no-usage", messages=HI)
    assert raw.headers["x-switchyard-usage-estimated"] == "true"
    assert raw.parse().usage is None  # the body stays the upstream's
    after = samples(gateway.url)
    labels = {"model": "fake/*", "estimated": "true"}
    for kind, tokens in (("prompt", PROMPT_TOKENS), ("completion", REPLY_TOKENS)):
        assert value(after, "switchyard_tokens_total", kind=kind, **labels) - value(
            before, "switchyard_tokens_total", kind=kind, **labels
        ) == tokens


def test_a_client_that_asks_for_stream_usage_always_gets_one_usage_chunk(client: openai.OpenAI) -> None:
    for model, prompt_tokens in (("gpt-test", 7), ("fake/no-usage", PROMPT_TOKENS)):
        chunks = list(
            client.chat.completions.create(model=model, messages=HI, stream=True, stream_options={"include_usage": True})
        )
        usage_chunks = [chunk for chunk in chunks if chunk.usage is not None]
        assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1] and chunks[-1].choices == []
        assert usage_chunks[0].usage.prompt_tokens == prompt_tokens  # type: ignore[union-attr]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "You said: hello there"


def test_a_stream_without_usage_asked_is_unchanged_but_counted(gateway: ServedApp, client: openai.OpenAI) -> None:
    before = samples(gateway.url)
    chunks = list(client.chat.completions.create(model="fake/no-usage", messages=HI, stream=True))
    assert all(chunk.usage is None for chunk in chunks) and chunks[-1].choices
    after = samples(gateway.url)
    labels = {"model": "fake/*", "kind": "completion", "estimated": "true"}
    assert value(after, "switchyard_tokens_total", **labels) - value(before, "switchyard_tokens_total", **labels) == REPLY_TOKENS
