"""What pricing costs per request: µs per ``PriceBook.cost`` (and ``worst_case``) call, by kind of price.

``cost()`` runs once per answer on the event loop and ``worst_case()``
once per admission, so both should stay well under 20 µs after a
deployment's first call. A deployment's rates are found once (the
configured ones when the book is made); the "first call" rows are what a
client's new ``provider/model`` name costs once: genai-prices' name
matching (a scan of its provider's models, 923 at OpenRouter) and, for a
known model, reading its price into a card checked against genai-prices.
The last rows are genai-prices' own ``calc_price``, for comparison.

    .venv/bin/python bench/pricing.py              # ~10 s
    .venv/bin/python bench/pricing.py --calls 2000
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import genai_prices

from gateway.config import parse_config
from gateway.pricing import PriceBook
from gateway.routing.deployment import Deployment
from providers.wire import Usage

CONFIG = """
providers:
  openai: {type: openai, api_key: x}
  anthropic: {type: anthropic, api_key: x}
  deepseek: {type: deepseek, api_key: x}
  openrouter: {type: openrouter, api_key: x}
  my-vllm: {type: custom, base_url: "http://127.0.0.1:8001/v1"}
  local: {type: local}
models:
  gpt-4o: {deployments: [{provider: openai, model: gpt-4o}]}
  sonnet: {deployments: [{provider: anthropic, model: claude-sonnet-4-5}]}
  deepseek: {deployments: [{provider: deepseek, model: deepseek-chat}]}
  llama: {deployments: [{provider: my-vllm, model: meta-llama/Llama-3.1-8B-Instruct}]}
  negotiated:
    price: {input_per_mtok: 2, output_per_mtok: 8, cached_input_per_mtok: 0.5}
    deployments: [{provider: openai, model: gpt-4o}]
  smollm2: {deployments: [{provider: local, model: SmolLM2-135M-Instruct}]}
"""
USAGE = Usage(1200, 350, cached_tokens=1024, reasoning_tokens=120)


def per_call(call: Callable[[], object], calls: int) -> float:
    """Median over five rounds of µs per call."""
    rounds = []
    for _ in range(5):
        started = time.perf_counter_ns()
        for _ in range(calls):
            call()
        rounds.append((time.perf_counter_ns() - started) / calls / 1000)
    return sorted(rounds)[2]


def first_calls(make: Callable[[int], Callable[[], object]], calls: int) -> float:
    """µs per call where each call is a deployment's first (``make(i)`` gives the i-th)."""
    prepared = [make(i) for i in range(calls)]
    started = time.perf_counter_ns()
    for call in prepared:
        call()
    return (time.perf_counter_ns() - started) / calls / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20000, help="calls per round for the cached rows")
    args = parser.parse_args()
    config = parse_config(CONFIG, environ={})
    providers = {name: None for name in config.providers}  # the book reads a deployment's names, not its adapter
    started = time.perf_counter()
    book = PriceBook(config)
    made_ms = (time.perf_counter() - started) * 1000

    def deployment(provider: str, model: str) -> Deployment:
        return Deployment(provider, model, providers[provider])  # type: ignore[arg-type]

    gpt4o, sonnet = deployment("openai", "gpt-4o"), deployment("anthropic", "claude-sonnet-4-5")
    deepseek, llama = deployment("deepseek", "deepseek-chat"), deployment("my-vllm", "meta-llama/Llama-3.1-8B-Instruct")
    local, mini = deployment("local", "SmolLM2-135M-Instruct"), deployment("openai", "gpt-4o-mini")
    unlisted = parse_config("providers: {openai: {type: openai, api_key: x}}", environ={})
    rows: list[tuple[str, float]] = [
        ("cost: known model, flat (gpt-4o at openai)", per_call(lambda: book.cost("gpt-4o", gpt4o, USAGE), args.calls)),
        ("cost: known model, tiered (claude-sonnet-4-5)", per_call(lambda: book.cost("sonnet", sonnet, USAGE), args.calls)),
        ("cost: known model, priced by time of day (deepseek-chat)",
         per_call(lambda: book.cost("deepseek", deepseek, USAGE), args.calls)),
        ("cost: unknown model (custom base_url): None", per_call(lambda: book.cost("llama", llama, USAGE), args.calls)),
        ("cost: config price", per_call(lambda: book.cost("negotiated", gpt4o, USAGE), args.calls)),
        ("cost: local", per_call(lambda: book.cost("smollm2", local, USAGE), args.calls)),
        ("cost: provider/model name outside models: (after its first call)",
         per_call(lambda: book.cost("openai/gpt-4o-mini", mini, USAGE), args.calls)),
        ("worst_case: gpt-4o, one deployment", per_call(lambda: book.worst_case("gpt-4o", [gpt4o], 1200, 4096), args.calls)),
        ("worst_case: claude-sonnet-4-5 and gpt-4o",
         per_call(lambda: book.worst_case("sonnet", [sonnet, gpt4o], 1200, 4096), args.calls)),
    ]
    first = max(args.calls // 100, 20)
    def known_first(i: int) -> Callable[[], object]:
        fresh = PriceBook(unlisted)  # a book that has not met openai/gpt-4o
        return lambda: fresh.cost("openai/gpt-4o", gpt4o, USAGE)

    rows += [
        ("first call: a known model (card read and checked)", first_calls(known_first, first)),
        ("first call: an unknown name at openai",
         first_calls(lambda i: lambda: book.cost("x", deployment("openai", f"nope-{i}"), USAGE), first)),
        ("first call: an unknown name at openrouter (923 models)",
         first_calls(lambda i: lambda: book.cost("x", deployment("openrouter", f"nope/{i}"), USAGE), first)),
    ]
    ours = genai_prices.Usage(input_tokens=1200, cache_read_tokens=1024, output_tokens=350, output_reasoning_tokens=120)
    rows += [
        ("genai_prices.calc_price: gpt-4o (its lookup cached)",
         per_call(lambda: genai_prices.calc_price(ours, "gpt-4o", provider_id="openai"), args.calls // 20)),
        ("genai_prices.calc_price: claude-sonnet-4-5",
         per_call(lambda: genai_prices.calc_price(ours, "claude-sonnet-4-5", provider_id="anthropic"), args.calls // 20)),
    ]
    print(f"{book.version}; PriceBook of {len(config.models)} models made in {made_ms:.1f} ms "
          "(includes genai-prices' first load)")  # fmt: skip
    width = max(len(name) for name, _ in rows)
    for name, micros in rows:
        print(f"{name:<{width}}  {micros:8.2f} µs")


if __name__ == "__main__":
    main()
