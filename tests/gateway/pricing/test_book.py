"""What a request costs, checked against the providers' published price pages.

Each worked example cites its page and writes the page's figures out, so
the expected dollars are the page's arithmetic, not the price book's. The
figures are those genai-prices 0.2.3 (constraints.txt) carries; a raised
pin that moves one fails here, and the example is checked against its page
again.
"""

from __future__ import annotations

from importlib.metadata import version

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import GatewayConfig, parse_config
from gateway.pricing import Cost, PriceBook
from gateway.routing.deployment import Deployment
from providers.wire import Usage

M = 1_000_000
GENAI = f"genai-prices {version('genai-prices')}"

CONFIG = """
providers:
  openai: {type: openai, api_key: x}
  anthropic: {type: anthropic, api_key: x}
  openai-by-url: {type: custom, base_url: "https://api.openai.com/v1", api_key: x}
  groq-by-url: {type: openai, base_url: "https://api.groq.com/openai/v1", api_key: x}
  my-vllm: {type: custom, base_url: "http://127.0.0.1:8001/v1"}
  anyscale: {type: anyscale, api_key: x}
  local: {type: local}
models:
  gpt-4o: {deployments: [{provider: openai, model: gpt-4o}]}
  sonnet: {deployments: [{provider: anthropic, model: claude-sonnet-4-5}]}
  o3: {deployments: [{provider: openai, model: o3}]}
  o4-mini: {deployments: [{provider: openai, model: o4-mini}]}
  embeddings: {deployments: [{provider: openai, model: text-embedding-3-small}]}
  tts: {deployments: [{provider: openai, model: tts-1}]}
  llama:
    deployments:
      - {provider: my-vllm, model: meta-llama/Llama-3.1-8B-Instruct}
      - {provider: anyscale, model: meta-llama/Llama-3.1-8B-Instruct}
      - {provider: openai-by-url, model: gpt-4o}
  nope: {deployments: [{provider: openai, model: no-such-model-at-all}]}
  llama-70b: {deployments: [{provider: groq-by-url, model: llama-3.3-70b-versatile}]}
  smollm2: {deployments: [{provider: local, model: SmolLM2-135M-Instruct}]}
  negotiated:
    price: {input_per_mtok: 2, output_per_mtok: 8, cached_input_per_mtok: 0.5, cache_write_per_mtok: 2.5}
    deployments: [{provider: openai, model: gpt-4o}, {provider: anthropic, model: claude-sonnet-4-5}]
  private:
    price: {input_per_mtok: 0.4, output_per_mtok: 1.6}
    deployments: [{provider: my-vllm, model: meta-llama/Llama-3.1-8B-Instruct}, {provider: local, model: qwen}]
"""


@pytest.fixture(scope="module")
def config() -> GatewayConfig:
    return parse_config(CONFIG, environ={})


@pytest.fixture(scope="module")
def book(config: GatewayConfig) -> PriceBook:
    return PriceBook(config)


def at(provider: str, model: str) -> Deployment:
    return Deployment(provider, model, None)  # type: ignore[arg-type]  # the book reads the names only


GPT_4O, SONNET = at("openai", "gpt-4o"), at("anthropic", "claude-sonnet-4-5")


def test_openai_cached_input(book: PriceBook) -> None:
    # https://platform.openai.com/docs/pricing (Standard, text tokens, per 1M): gpt-4o input $2.50,
    # cached input $1.25, output $10.00. Prompt caching (https://platform.openai.com/docs/guides/prompt-caching):
    # cached_tokens is part of prompt_tokens.
    usage = Usage(prompt_tokens=10_000, completion_tokens=500, cached_tokens=8_192)
    expected = (1_808 * 2.50 + 8_192 * 1.25 + 500 * 10.00) / M
    assert book.cost("gpt-4o", GPT_4O, usage) == Cost(pytest.approx(expected, rel=1e-12), GENAI)  # type: ignore[arg-type]
    assert expected == pytest.approx(0.01976)


def test_anthropic_cache_read_and_write(book: PriceBook) -> None:
    # https://www.anthropic.com/pricing#api and https://docs.anthropic.com/en/docs/about-claude/pricing,
    # Claude Sonnet 4.5 per MTok: base input $3, 5m cache writes $3.75, cache hits $0.30, output $15.
    # Anthropic reports input_tokens=50, cache_creation_input_tokens=2000, cache_read_input_tokens=10000;
    # in OpenAI's counting (providers/wire.py) the prompt is their sum.
    usage = Usage(prompt_tokens=12_050, completion_tokens=400, cached_tokens=10_000, cache_write_tokens=2_000)
    expected = (50 * 3 + 2_000 * 3.75 + 10_000 * 0.30 + 400 * 15) / M
    cost = book.cost("sonnet", SONNET, usage)
    assert cost is not None and cost.usd == pytest.approx(expected, rel=1e-12) and cost.source == GENAI
    assert expected == pytest.approx(0.01665)


def test_anthropic_long_context_tier_prices_the_whole_prompt(book: PriceBook) -> None:
    # https://docs.anthropic.com/en/docs/about-claude/pricing, long context pricing for Sonnet 4.5:
    # <= 200K input tokens: input $3, output $15; > 200K: input $6, output $22.50 per MTok, for all tokens.
    long = book.cost("sonnet", SONNET, Usage(prompt_tokens=250_000, completion_tokens=1_000))
    short = book.cost("sonnet", SONNET, Usage(prompt_tokens=200_000, completion_tokens=1_000))
    assert long is not None and long.usd == pytest.approx((250_000 * 6 + 1_000 * 22.50) / M, rel=1e-12)
    assert short is not None and short.usd == pytest.approx((200_000 * 3 + 1_000 * 15) / M, rel=1e-12)


@pytest.mark.parametrize(
    ("model", "usage", "expected"),
    [
        # https://platform.openai.com/docs/pricing: o3 input $2.00, cached input $0.50, output $8.00 (since 2025-06-10);
        # https://platform.openai.com/docs/guides/reasoning: reasoning tokens are billed as output tokens
        # (they are part of completion_tokens, in completion_tokens_details.reasoning_tokens).
        ("o3", Usage(2_000, 5_000, reasoning_tokens=4_500), (2_000 * 2.00 + 5_000 * 8.00) / M),
        # o4-mini: input $1.10, cached input $0.275, output $4.40.
        ("o4-mini", Usage(3_000, 2_500, cached_tokens=1_024, reasoning_tokens=2_000),
         (1_976 * 1.10 + 1_024 * 0.275 + 2_500 * 4.40) / M),
    ],
)  # fmt: skip
def test_reasoning_tokens_cost_the_output_rate(book: PriceBook, model: str, usage: Usage, expected: float) -> None:
    cost = book.cost(model, at("openai", model), usage)
    assert cost is not None and cost.usd == pytest.approx(expected, rel=1e-12)
    no_reasoning = book.cost(model, at("openai", model), Usage(usage.prompt_tokens, usage.completion_tokens,
                                                                 cached_tokens=usage.cached_tokens))  # fmt: skip
    assert no_reasoning == cost


def test_embeddings(book: PriceBook) -> None:
    # https://platform.openai.com/docs/pricing, embeddings: text-embedding-3-small $0.02 per 1M tokens.
    cost = book.cost("embeddings", at("openai", "text-embedding-3-small"), Usage(prompt_tokens=250_000, completion_tokens=0))
    assert cost is not None and cost.usd == pytest.approx(250_000 * 0.02 / M, rel=1e-12)


@pytest.mark.parametrize(
    ("model", "deployment"),
    [("nope", at("openai", "no-such-model-at-all")),  # genai-prices does not know the model
     ("llama", at("my-vllm", "meta-llama/Llama-3.1-8B-Instruct")),  # a custom base_url no provider has
     ("llama", at("anyscale", "meta-llama/Llama-3.1-8B-Instruct")),  # a preset genai-prices has no prices for
     ("tts", at("openai", "tts-1")),  # priced per character: not a unit the usage counts
     ("openai/whatever", at("nowhere", "x"))],  # not a configured provider
)  # fmt: skip
def test_no_price_is_unknown_never_zero(book: PriceBook, model: str, deployment: Deployment) -> None:
    assert book.cost(model, deployment, Usage(100, 10)) is None


def test_a_custom_base_url_is_priced_as_the_provider_it_points_at(book: PriceBook) -> None:
    # The same gpt-4o figures as above: https://platform.openai.com/docs/pricing.
    cost = book.cost("llama", at("openai-by-url", "gpt-4o"), Usage(1_000, 100, cached_tokens=512))
    assert cost == Cost(pytest.approx((488 * 2.50 + 512 * 1.25 + 100 * 10.00) / M, rel=1e-12), GENAI)  # type: ignore[arg-type]


def test_a_provider_is_priced_by_the_api_its_base_url_is(book: PriceBook) -> None:
    # `type: openai` with Groq's URL (as in the README) is Groq: https://groq.com/pricing, Llama 3.3 70B Versatile
    # 128k: $0.59 input, $0.79 output per million tokens.
    cost = book.cost("llama-70b", at("groq-by-url", "llama-3.3-70b-versatile"), Usage(20_000, 1_500))
    assert cost == Cost(pytest.approx((20_000 * 0.59 + 1_500 * 0.79) / M, rel=1e-12), GENAI)  # type: ignore[arg-type]


def test_a_models_own_price_wins_on_each_of_its_deployments(book: PriceBook) -> None:
    # negotiated: input $2, cached $0.50, cache write $2.50, output $8 per million.
    usage = Usage(12_050, 400, cached_tokens=10_000, cache_write_tokens=2_000, reasoning_tokens=300)
    expected = (50 * 2 + 10_000 * 0.5 + 2_000 * 2.5 + 400 * 8) / M
    for deployment in (GPT_4O, SONNET):
        assert book.cost("negotiated", deployment, usage) == Cost(pytest.approx(expected, rel=1e-12), "config")  # type: ignore[arg-type]
    # The same deployments under a model without a price: genai-prices' list price.
    cost = book.cost("gpt-4o", GPT_4O, usage)
    assert cost is not None and cost.source == GENAI and cost.usd != pytest.approx(expected)


def test_unset_cache_rates_are_the_input_rate(book: PriceBook) -> None:
    # private: input $0.40, output $1.60; cached and written prompt tokens cost the input rate.
    plain = book.cost("private", at("my-vllm", "meta-llama/Llama-3.1-8B-Instruct"), Usage(1_000, 100))
    cached = book.cost("private", at("my-vllm", "meta-llama/Llama-3.1-8B-Instruct"),
                       Usage(1_000, 100, cached_tokens=600, cache_write_tokens=400))  # fmt: skip
    assert plain == cached == Cost(pytest.approx((1_000 * 0.4 + 100 * 1.6) / M, rel=1e-12), "config")  # type: ignore[arg-type]


def test_local_models_cost_nothing_unless_priced(book: PriceBook) -> None:
    assert book.cost("smollm2", at("local", "SmolLM2-135M-Instruct"), Usage(5_000, 500)) == Cost(0.0, "local")
    assert book.cost("local/SmolLM2-135M-Instruct", at("local", "SmolLM2-135M-Instruct"), Usage(5, 5)) == Cost(0.0, "local")
    priced = book.cost("private", at("local", "qwen"), Usage(5_000, 500))
    assert priced == Cost(pytest.approx((5_000 * 0.4 + 500 * 1.6) / M, rel=1e-12), "config")  # type: ignore[arg-type]


def test_a_deployment_under_another_name_takes_the_price_of_the_model_that_lists_it(book: PriceBook) -> None:
    usage = Usage(1_000, 100)
    # `private` lists my-vllm's Llama with a price; `llama` lists it without one (and so stays unpriced).
    assert book.cost("my-vllm/meta-llama/Llama-3.1-8B-Instruct", at("my-vllm", "meta-llama/Llama-3.1-8B-Instruct"),
                     usage) == book.cost("private", at("my-vllm", "meta-llama/Llama-3.1-8B-Instruct"), usage)  # fmt: skip
    assert book.cost("llama", at("my-vllm", "meta-llama/Llama-3.1-8B-Instruct"), usage) is None
    # A fallback's answer counted under the model first asked for: the answering deployment's price.
    assert book.cost("embeddings", SONNET, usage) == book.cost("negotiated", SONNET, usage)
    # A provider/model name nothing in `models:` lists: genai-prices.
    mini = book.cost("openai/gpt-4o-mini", at("openai", "gpt-4o-mini"), usage)
    # https://platform.openai.com/docs/pricing: gpt-4o-mini input $0.15, output $0.60.
    assert mini == Cost(pytest.approx((1_000 * 0.15 + 100 * 0.60) / M, rel=1e-12), GENAI)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "usage",
    [Usage(100, 10, cached_tokens=101), Usage(100, 10, cached_tokens=60, cache_write_tokens=41),
     Usage(100, 10, reasoning_tokens=11)],
)  # fmt: skip
def test_a_usage_that_contradicts_itself_has_no_cost(book: PriceBook, usage: Usage) -> None:
    assert book.cost("gpt-4o", GPT_4O, usage) is None
    assert book.cost("negotiated", GPT_4O, usage) is None


def test_unpriced_lists_each_configured_deployment_no_price_covers(book: PriceBook) -> None:
    assert book.unpriced() == [
        "tts -> openai/tts-1",
        "llama -> my-vllm/meta-llama/Llama-3.1-8B-Instruct",
        "llama -> anyscale/meta-llama/Llama-3.1-8B-Instruct",
        "nope -> openai/no-such-model-at-all",
    ]


def test_version_names_the_installed_table(book: PriceBook) -> None:
    assert book.version == GENAI == "genai-prices 0.2.3"  # the pin in constraints.txt


def test_worst_case_is_the_dearest_split_on_the_dearest_deployment(book: PriceBook) -> None:
    # gpt-4o: a cache read is cheaper than input, so the dearest prompt is all uncached.
    assert book.worst_case("gpt-4o", [GPT_4O], 1_000, 500) == pytest.approx((1_000 * 2.50 + 500 * 10.00) / M, rel=1e-12)
    # Sonnet 4.5: a 5m cache write ($3.75) is dearer than input ($3).
    sonnet = (1_000 * 3.75 + 500 * 15) / M
    assert book.worst_case("sonnet", [SONNET], 1_000, 500) == pytest.approx(sonnet, rel=1e-12)
    assert book.worst_case("sonnet", [GPT_4O, SONNET], 1_000, 500) == pytest.approx(sonnet, rel=1e-12)
    # negotiated: cache write $2.50 over input $2.
    assert book.worst_case("negotiated", [GPT_4O], 1_000, 500) == pytest.approx((1_000 * 2.5 + 500 * 8) / M, rel=1e-12)
    assert book.worst_case("smollm2", [at("local", "SmolLM2-135M-Instruct")], 1_000, 500) == 0.0


def test_worst_case_is_unknown_when_any_candidate_is(book: PriceBook) -> None:
    llama = [at("openai-by-url", "gpt-4o"), at("my-vllm", "meta-llama/Llama-3.1-8B-Instruct")]
    assert book.worst_case("llama", llama, 1_000, 500) is None
    assert book.worst_case("gpt-4o", [], 1_000, 500) is None


DEPLOYMENTS = [("gpt-4o", GPT_4O), ("sonnet", SONNET), ("o3", at("openai", "o3")), ("negotiated", GPT_4O),
               ("private", at("local", "qwen"))]  # fmt: skip


@given(
    st.sampled_from(DEPLOYMENTS),
    st.integers(0, 400_000), st.integers(0, 20_000),
    st.floats(0, 1), st.floats(0, 1), st.floats(0, 1),
)  # fmt: skip
def test_no_split_costs_more_than_the_worst_case(
    book: PriceBook, deployment: tuple[str, Deployment], prompt: int, completion: int, cached: float, written: float,
    reasoning: float,
) -> None:
    cached_tokens = int(prompt * cached)
    usage = Usage(prompt, completion, cached_tokens=cached_tokens, cache_write_tokens=int((prompt - cached_tokens) * written),
                  reasoning_tokens=int(completion * reasoning))  # fmt: skip
    model, where = deployment
    cost = book.cost(model, where, usage)
    worst = book.worst_case(model, [where], prompt, completion)
    assert cost is not None and worst is not None
    assert cost.usd <= worst * (1 + 1e-12)

