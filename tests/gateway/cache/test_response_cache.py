"""The response cache on real sockets: the openai SDK against the gateway, a fake upstream that counts its calls."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.app import create_app
from gateway.config import parse_config
from tests.support.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServedApp

ADMIN = "sk-admin-cache-tests-0123456789"
KEYS = {"a1": "sk-team-a-first-0123456789", "a2": "sk-team-a-second-0123456789", "b": "sk-solo-b-0123456789",
        "usd": "sk-dollar-budget-0123456789"}  # fmt: skip
CONFIG = """
server:
  data_dir: "{data}"
  ledger_flush_interval: 0.05
  admin_keys: ["{admin}"]
  api_keys:
    - {{key: "{a1}", name: a1}}
    - {{key: "{a2}", name: a2}}
    - {{key: "{b}", name: b}}
    - {{key: "{usd}", name: usd, budget_usd: 0.03}}
  teams: [{{name: team-a, keys: [a1, a2]}}]
router: {{retries: {{attempts: 1}}}}
providers:
  fake: {{type: custom, base_url: "{upstream}/v1", api_key: sk-fake-upstream-key}}
models:
  cached:
    cache: {{mode: exact, ttl: 60}}
    deployments: [{{provider: fake, model: gpt-4o-mini}}]
  short-lived:
    cache: {{mode: exact, ttl: 0.4}}
    deployments: [{{provider: fake, model: gpt-4o-mini}}]
  sampled:
    cache: {{mode: exact, sampled: true, max_entries: 2}}
    deployments: [{{provider: fake, model: gpt-4o-mini}}]
  broken:
    cache: {{mode: exact}}
    deployments: [{{provider: fake, model: broken-stream}}]
  priced:
    cache: {{mode: exact}}
    price: {{input_per_mtok: 1000, output_per_mtok: 1000}}
    deployments: [{{provider: fake, model: gpt-4o-mini}}]
  plain:
    deployments: [{{provider: fake, model: gpt-4o-mini}}]
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: tuple[FakeOpenAI, ServedApp]) -> Iterator[str]:
    yaml = CONFIG.format(data=tmp_path_factory.mktemp("cache-data"), admin=ADMIN, upstream=upstream[1].url, **KEYS)
    with ServedApp(create_app(parse_config(yaml, environ={}))) as served:
        yield served.url


@pytest.fixture()
def fake(upstream: tuple[FakeOpenAI, ServedApp]) -> FakeOpenAI:
    upstream[0].requests.clear()
    return upstream[0]


def client(url: str, key: str = "a1") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEYS[key], max_retries=0)


def ask(url: str, text: str, model: str = "cached", key: str = "a1", **extra: Any) -> Any:
    """A chat request through the SDK; its raw response (headers) and parsed answer."""
    raw = client(url, key).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], **{"temperature": 0, **extra}
    )
    return raw, raw.parse()


def unique(name: str) -> str:
    return f"{name} {time.monotonic_ns()}"


def test_a_repeated_request_is_answered_from_the_cache(gateway: str, fake: FakeOpenAI) -> None:
    text = unique("capital of France?")
    first_raw, first = ask(gateway, text)
    second_raw, second = ask(gateway, text, user="someone-else")  # `user` does not change the answer
    assert first_raw.headers["x-switchyard-cache"] == "miss"
    assert second_raw.headers["x-switchyard-cache"] == "hit"
    assert second_raw.headers["x-switchyard-provider"] == "cache"
    assert second_raw.headers["x-switchyard-cost-usd"] == "0.00000000"
    assert second.choices[0].message.content == first.choices[0].message.content
    assert len(fake.requests) == 1


def test_a_field_that_changes_the_answer_is_another_entry(gateway: str, fake: FakeOpenAI) -> None:
    text = unique("seeded")
    assert ask(gateway, text, seed=1)[0].headers["x-switchyard-cache"] == "miss"
    assert ask(gateway, text, seed=2)[0].headers["x-switchyard-cache"] == "miss"
    assert ask(gateway, text, seed=1, max_tokens=5)[0].headers["x-switchyard-cache"] == "miss"
    assert ask(gateway, text, seed=1)[0].headers["x-switchyard-cache"] == "hit"
    assert len(fake.requests) == 3


def test_a_stream_replays_a_kept_answer_event_by_event(gateway: str, fake: FakeOpenAI) -> None:
    text = unique("stream me")
    _, fresh = ask(gateway, text)
    with client(gateway).chat.completions.with_streaming_response.create(
        model="cached", messages=[{"role": "user", "content": text}], temperature=0, stream=True,
        stream_options={"include_usage": True},
    ) as response:  # fmt: skip
        assert response.headers["x-switchyard-cache"] == "hit"
        chunks = list(response.parse())
    assert [chunk.object for chunk in chunks] == ["chat.completion.chunk"] * len(chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == fresh.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == fresh.choices[0].finish_reason
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage is not None and usage.total_tokens == fresh.usage.total_tokens
    assert usage.model_extra is not None and usage.model_extra["cost_usd"] == 0
    assert len(fake.requests) == 1


def test_a_streamed_answer_is_kept_whole_and_answers_a_plain_request(gateway: str, fake: FakeOpenAI) -> None:
    text = unique("streamed first")
    stream = client(gateway).chat.completions.create(
        model="cached", messages=[{"role": "user", "content": text}], temperature=0, stream=True
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    _, kept = _settled_hit(gateway, text)
    assert kept.choices[0].message.content == streamed and kept.usage is not None
    assert len(fake.requests) == 1


def _settled_hit(url: str, text: str) -> Any:
    """The stream's answer is kept in the background once it ended: ask until it is there (bounded)."""
    for _ in range(50):
        raw, answer = ask(url, text)
        if raw.headers["x-switchyard-cache"] == "hit":
            return raw, answer
        time.sleep(0.05)
    raise AssertionError("the streamed answer was never kept")


def test_a_broken_stream_is_not_kept(gateway: str, fake: FakeOpenAI) -> None:
    text = unique("broken")
    with pytest.raises(openai.APIError):
        for _ in client(gateway).chat.completions.create(
            model="broken", messages=[{"role": "user", "content": text}], temperature=0, stream=True
        ):
            pass
    time.sleep(0.2)  # were it kept, the background put would be done by now
    assert ask(gateway, text, model="broken")[0].headers["x-switchyard-cache"] == "miss"


def test_requests_that_sample_bypass_the_cache_unless_the_model_says_so(gateway: str, fake: FakeOpenAI) -> None:
    text = unique("sampled")
    raw = client(gateway).chat.completions.with_raw_response.create(model="cached", messages=[{"role": "user", "content": text}])
    assert raw.headers["x-switchyard-cache"] == "bypass"
    for expected in ("miss", "hit"):
        raw = client(gateway).chat.completions.with_raw_response.create(
            model="sampled", messages=[{"role": "user", "content": text}], temperature=0.9
        )
        assert raw.headers["x-switchyard-cache"] == expected


def test_a_model_without_a_cache_says_nothing(gateway: str, fake: FakeOpenAI) -> None:
    raw, _ = ask(gateway, unique("plain"), model="plain")
    assert "x-switchyard-cache" not in raw.headers


@pytest.mark.parametrize(
    "how",
    [{"extra_headers": {"Cache-Control": "no-cache"}}, {"extra_headers": {"Cache-Control": "no-store"}},
     {"extra_body": {"cache": False}}],
    ids=["no-cache", "no-store", "cache-false"],
)  # fmt: skip
def test_a_client_can_bypass_the_cache(gateway: str, fake: FakeOpenAI, how: dict[str, Any]) -> None:
    text = unique("bypass")
    ask(gateway, text)
    raw, _ = ask(gateway, text, **how)
    assert raw.headers["x-switchyard-cache"] == "bypass"
    assert len(fake.requests) == 2
    assert "cache" not in fake.requests[-1].body  # the gateway's own field never goes upstream
    assert ask(gateway, text)[0].headers["x-switchyard-cache"] == "hit"


def test_no_store_keeps_nothing(gateway: str, fake: FakeOpenAI) -> None:
    text = unique("never kept")
    ask(gateway, text, extra_headers={"Cache-Control": "no-store"})
    assert ask(gateway, text)[0].headers["x-switchyard-cache"] == "miss"


def test_an_entry_expires_after_its_ttl(gateway: str, fake: FakeOpenAI) -> None:
    text = unique("short")
    assert ask(gateway, text, model="short-lived")[0].headers["x-switchyard-cache"] == "miss"
    assert ask(gateway, text, model="short-lived")[0].headers["x-switchyard-cache"] == "hit"
    time.sleep(0.5)
    assert ask(gateway, text, model="short-lived")[0].headers["x-switchyard-cache"] == "miss"


def test_max_entries_drops_the_oldest(gateway: str, fake: FakeOpenAI) -> None:
    texts = [unique(f"entry {i}") for i in range(3)]
    for text in texts:
        ask(gateway, text, model="sampled")
    assert ask(gateway, texts[0], model="sampled")[0].headers["x-switchyard-cache"] == "miss"
    assert ask(gateway, texts[2], model="sampled")[0].headers["x-switchyard-cache"] == "hit"


def test_a_team_shares_its_entries_and_no_one_else_sees_them(gateway: str, fake: FakeOpenAI) -> None:
    text = unique("team secret")
    assert ask(gateway, text, key="a1")[0].headers["x-switchyard-cache"] == "miss"
    assert ask(gateway, text, key="a2")[0].headers["x-switchyard-cache"] == "hit"
    assert ask(gateway, text, key="b")[0].headers["x-switchyard-cache"] == "miss"
    assert ask(gateway, text, key="b")[0].headers["x-switchyard-cache"] == "hit"
    assert len(fake.requests) == 2


def test_a_hit_costs_nothing_and_the_ledger_counts_what_it_saved(gateway: str, fake: FakeOpenAI) -> None:
    text = unique("ledger")
    _, fresh = ask(gateway, text, key="b", model="short-lived")
    ask(gateway, text, key="b", model="short-lived")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = httpx.get(f"{gateway}/v1/usage", params={"model": "short-lived", "api_key": "b", "group_by": "model"},
                         headers={"Authorization": f"Bearer {ADMIN}"}).json()["data"]  # fmt: skip
        if rows and rows[0]["requests"] >= 2:
            break
        time.sleep(0.05)
    row = rows[0]
    assert row["cache_hits"] >= 1 and row["saved_tokens"] >= fresh.usage.total_tokens
    # The hit used no tokens: only the fresh answers' tokens are in the sums.
    assert row["total_tokens"] == (row["requests"] - row["cache_hits"]) * fresh.usage.total_tokens


def test_the_responses_door_is_answered_from_the_same_cache(gateway: str, fake: FakeOpenAI) -> None:
    text = unique("through responses")
    api = client(gateway)
    first = api.responses.with_raw_response.create(model="cached", input=text, temperature=0)
    second = api.responses.with_raw_response.create(model="cached", input=text, temperature=0)
    assert (first.headers["x-switchyard-cache"], second.headers["x-switchyard-cache"]) == ("miss", "hit")
    assert second.parse().output_text == first.parse().output_text and second.parse().object == "response"
    assert len(fake.requests) == 1


def test_a_semantic_cache_with_no_embedding_model_is_refused_at_start(tmp_path: Path) -> None:
    from gateway.errors import ConfigError

    yaml = """
providers: {fake: {type: custom, base_url: "http://127.0.0.1:9/v1"}}
models: {m: {cache: {mode: semantic}, deployments: [{provider: fake, model: m}]}}
"""
    with pytest.raises(ConfigError, match="semantic mode needs a `type: local` provider with an embedding model"):
        create_app(parse_config(yaml, environ={}))


def test_two_replicas_share_one_cache_through_redis(
    tmp_path: Path, upstream: tuple[FakeOpenAI, ServedApp], fake: FakeOpenAI, redis_url: str
) -> None:
    yaml = f"""
server: {{usage_ledger: false, redis_url: "{redis_url}"}}
providers: {{fake: {{type: custom, base_url: "{upstream[1].url}/v1", api_key: sk-fake-upstream-key}}}}
models: {{shared: {{cache: {{mode: exact}}, deployments: [{{provider: fake, model: gpt-4o-mini}}]}}}}
"""
    config = parse_config(yaml, environ={})
    text = unique("shared across replicas")
    with ServedApp(create_app(config)) as first, ServedApp(create_app(config)) as second:
        api = [openai.OpenAI(base_url=f"{app.url}/v1", api_key="none", max_retries=0) for app in (first, second)]

        def on(replica: int) -> str:
            raw = api[replica].chat.completions.with_raw_response.create(
                model="shared", messages=[{"role": "user", "content": text}], temperature=0
            )
            return raw.headers["x-switchyard-cache"]

        assert on(0) == "miss"
        deadline = time.monotonic() + 5  # the first replica keeps its answer in the background
        while (status := on(1)) != "hit" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status == "hit" and on(0) == "hit"
    assert len(fake.requests) <= 2 and fake.requests[0].body["messages"][0]["content"] == text


def test_a_number_is_one_key_however_it_is_spelled(gateway: str, fake: FakeOpenAI) -> None:
    text = unique("zero")
    assert ask(gateway, text, temperature=0.0)[0].headers["x-switchyard-cache"] == "miss"  # LangChain sends 0.0
    assert ask(gateway, text, temperature=0)[0].headers["x-switchyard-cache"] == "hit"
    parts = [{"type": "text", "text": text}]  # the same message as text parts
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="cached", messages=[{"role": "user", "content": parts}], temperature=0  # type: ignore[list-item]
    )
    assert raw.headers["x-switchyard-cache"] == "hit"


def test_a_cache_field_that_is_not_a_boolean_is_a_400_naming_it(gateway: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        ask(gateway, unique("bad"), extra_body={"cache": "no"})
    assert refused.value.body["param"] == "cache"  # type: ignore[index]


def test_a_hit_is_answered_when_the_dollar_budget_would_refuse_a_fresh_call(gateway: str, fake: FakeOpenAI) -> None:
    text = unique("budget")
    assert ask(gateway, text, model="priced", key="usd", max_tokens=5)[0].headers["x-switchyard-cache"] == "miss"
    deadline = time.monotonic() + 5  # the first answer's cost is settled once it finished
    while True:
        raw, _ = ask(gateway, text, model="priced", key="usd", max_tokens=5)
        if raw.headers["x-switchyard-cache"] == "hit" or time.monotonic() > deadline:
            break
    assert raw.headers["x-switchyard-cache"] == "hit" and raw.headers["x-switchyard-cost-usd"] == "0.00000000"
    with pytest.raises(openai.RateLimitError, match=r"budget of \$0.03 of key 'usd'"):
        ask(gateway, unique("fresh"), model="priced", key="usd", max_tokens=5)
