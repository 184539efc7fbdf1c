"""What constrained decoding costs: the engine with and without a JSON-schema grammar, side by side, on SmolLM2.

For each concurrency (1 and 32 by default) the same chat prompts run
without a grammar and with one, alternating (plain, grammar, plain, grammar,
...) so that drift hits both alike; the medians are printed with their
ratio. The schema (a list of at least 60 records of a name, a score and
tags) cannot close within ``--max-tokens``, so every request generates
exactly that many tokens either way, and the difference is the grammar's:
filling each row's token bitmask (on llguidance's threads, during the
forward pass), applying it to the logits, and advancing the matcher.

Also printed: the grammar's compile time, first (llguidance's tokenizer for
the model, built once, is timed apart) and from the engine's cache.

    .venv/bin/python bench/structured.py             # ~3 min
    .venv/bin/python bench/structured.py --quick     # ~1 min: 1 and 8 concurrent, 32 tokens

Targets (issue 15): at most 10% of throughput at 32 concurrent, at most 5 ms of TPOT at 1.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch

from local_engine import EngineConfig, LLMEngine, SamplingParams
from local_engine.loader import load_model
from local_engine.structured_outputs import StructuredOutputsParams

QUESTION = "List the planets of the solar system with a score for each, as JSON."
RECORD = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "score": {"type": "integer", "minimum": 0, "maximum": 100},
        "tags": {"type": "array", "items": {"enum": ["rocky", "gas", "ice", "ringed", "moons"]}, "maxItems": 3},
    },
    "required": ["name", "score", "tags"],
    "additionalProperties": False,
}
SCHEMA = {
    "type": "object",
    "properties": {"records": {"type": "array", "items": RECORD, "minItems": 60}},
    "required": ["records"],
    "additionalProperties": False,
}
THROUGHPUT_TARGET = 0.10  # at most this share of tokens/s lost at the highest concurrency
TPOT_TARGET_MS = 5.0  # at most this many ms added per output token at concurrency 1


@dataclass(frozen=True)
class Run:
    tokens_per_s: float
    tpot_ms: float
    tokens: int


def run(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams, tag: str) -> Run:
    start = time.perf_counter()
    first: dict[str, float] = {}
    done: dict[str, float] = {}
    counts: dict[str, int] = {}
    for index, prompt in enumerate(prompts):
        engine.add_request(f"{tag}-{index}", {"prompt_token_ids": prompt}, params)
    while engine.has_unfinished_requests():
        outputs = engine.step()
        now = time.perf_counter()
        for output in outputs:
            first.setdefault(output.request_id, now)
            if output.finished:
                done[output.request_id] = now
                counts[output.request_id] = len(output.outputs[0].token_ids)
    elapsed = time.perf_counter() - start
    tokens = sum(counts.values())
    tpot = statistics.median((done[r] - first[r]) / max(1, counts[r] - 1) for r in done)
    return Run(tokens / elapsed, tpot * 1000, tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3, help="alternating plain/grammar runs per concurrency")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    levels = [1, 8] if args.quick else [int(c) for c in args.concurrency.split(",")]
    max_tokens = 32 if args.quick else args.max_tokens
    rounds = 1 if args.quick else args.rounds

    engine = LLMEngine(EngineConfig(max_num_seqs=max(levels)), load_model(None))
    tokenizer = engine.loaded.tokenizer
    text = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True)
    prompt = tokenizer.encode(text, add_special_tokens=False)
    constraint = StructuredOutputsParams(json=SCHEMA)

    started = time.perf_counter()
    engine.grammars.tokenizer()
    tokenizer_s = time.perf_counter() - started
    started = time.perf_counter()
    engine.grammars.compile(constraint)
    first_ms = (time.perf_counter() - started) * 1000
    cached = []
    for _ in range(20):
        started = time.perf_counter()
        engine.grammars.compile(constraint)
        cached.append((time.perf_counter() - started) * 1000)

    plain = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    guided = SamplingParams(temperature=0, max_tokens=max_tokens, structured_outputs=constraint)
    for params in (plain, guided):  # first-call allocations, llguidance's lexer
        run(engine, [prompt] * 2, params, f"warm-{id(params)}")
    print(
        f"SmolLM2-135M-Instruct, {engine.loaded.model.dtype}, {torch.get_num_threads()} threads, "
        f"{max_tokens} new tokens per request, {rounds} alternating rounds (medians)\n"
    )
    print(f"llguidance tokenizer for the model (once): {tokenizer_s * 1000:.0f} ms")
    print(f"grammar compile, first: {first_ms:.2f} ms; from the cache (a matcher copy): {statistics.median(cached):.3f} ms\n")
    header = f"{'concurrency':>11}  {'plain tok/s':>11}  {'grammar tok/s':>13}  {'ratio':>6}  {'plain TPOT':>10}  {'grammar TPOT':>12}  {'added':>8}"
    print(header)
    print("-" * len(header))
    verdicts = []
    for level in levels:
        prompts = [prompt] * level
        plains, guideds = [], []
        for index in range(rounds):
            plains.append(run(engine, prompts, plain, f"p{level}-{index}"))
            guideds.append(run(engine, prompts, guided, f"g{level}-{index}"))
        if any(r.tokens != level * max_tokens for r in guideds):
            print(f"  warning: a constrained run ended early ({[r.tokens for r in guideds]} tokens): the schema closed")
        p_tps = statistics.median(r.tokens_per_s for r in plains)
        g_tps = statistics.median(r.tokens_per_s for r in guideds)
        p_tpot = statistics.median(r.tpot_ms for r in plains)
        g_tpot = statistics.median(r.tpot_ms for r in guideds)
        print(
            f"{level:>11}  {p_tps:>11.1f}  {g_tps:>13.1f}  {g_tps / p_tps:>5.2f}x  {p_tpot:>8.1f}ms  {g_tpot:>10.1f}ms"
            f"  {g_tpot - p_tpot:>+6.1f}ms"
        )
        if level == 1:
            verdicts.append(("TPOT added at 1", g_tpot - p_tpot <= TPOT_TARGET_MS, f"{g_tpot - p_tpot:+.1f} ms (<= {TPOT_TARGET_MS:g})"))
        if level == max(levels) and level > 1:
            lost = 1 - g_tps / p_tps
            verdicts.append((f"throughput lost at {level}", lost <= THROUGHPUT_TARGET, f"{lost:.1%} (<= {THROUGHPUT_TARGET:.0%})"))
    print()
    for name, ok, figure in verdicts:
        print(f"{name}: {figure}  {'ok' if ok else 'MISS'}")


if __name__ == "__main__":
    main()
