"""The local engine against transformers' generate, side by side, on SmolLM2-135M-Instruct.

For each concurrency, the same prompts (mixed lengths, chat-templated) and
the same number of new tokens per request go through:

- the engine: all requests submitted at once, continuous batching;
- transformers: one static, left-padded batch through ``generate``.

Printed: output tokens/s, time to first token and time per output token
(engine), the ratio to transformers, and the KV memory the engine used
against a contiguous cache sized for the longest request. With
``--quantization``, one engine per listed variant ("none" is the exact
weights) runs the same prompts; bench/perplexity.py measures what each
variant costs in quality.

    .venv/bin/python bench/engine.py                 # ~4 min
    .venv/bin/python bench/engine.py --quick         # ~1 min
    .venv/bin/python bench/engine.py --quantization none,int4,w8a8
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM

from local_engine import EngineConfig, LLMEngine, SamplingParams
from local_engine.kv_cache import KVCache
from local_engine.loader import LoadedModel, load_model

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in two sentences why the sky is blue, as you would to a curious ten-year-old who asks a lot of questions.",
    "List three uses of copper.",
    "Summarise the plot of Romeo and Juliet in a short paragraph, mentioning the families, the balcony, the friar and how it ends.",
    "Translate 'good morning' into Spanish, French and German.",
    "What is 17 times 23? Show your working step by step.",
    "Give me a short, friendly reminder to drink water.",
]

# Reported on the same kind of machine with the same GGUF (the figures), for scale only.
LLAMA_CPP_SINGLE_STREAM = 77.0
LLAMA_CPP_SERVER_8 = 45.0


@dataclass(frozen=True)
class EngineRun:
    tokens_per_s: float
    ttft_p50: float
    tpot_p50: float
    peak_kv_bytes: int


def chat_prompts(loaded: LoadedModel, count: int) -> list[list[int]]:
    tokenizer = loaded.tokenizer
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], tokenize=False, add_generation_prompt=True
        )
        for i in range(count)
    ]
    return [tokenizer.encode(text, add_special_tokens=False) for text in texts]


def run_engine(engine: LLMEngine, prompts: list[list[int]], max_tokens: int) -> EngineRun:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    start = time.perf_counter()
    first: dict[str, float] = {}
    done: dict[str, float] = {}
    for index, prompt in enumerate(prompts):
        engine.add_request(f"b{index}", prompt, params)
    manager = engine.block_manager
    peak_blocks = 0
    while engine.has_unfinished_requests():
        outputs = engine.step()
        now = time.perf_counter()
        peak_blocks = max(peak_blocks, manager.num_blocks - manager.num_free_blocks)
        for output in outputs:
            first.setdefault(output.request_id, now)
            if output.finished:
                done[output.request_id] = now
    elapsed = time.perf_counter() - start
    model = engine.loaded.model
    per_block = KVCache.bytes_per_block(model.num_layers, engine.config.block_size, model.num_kv_heads, model.head_dim, model.dtype)
    return EngineRun(
        tokens_per_s=len(prompts) * max_tokens / elapsed,
        ttft_p50=statistics.median(first[r] - start for r in first),
        tpot_p50=statistics.median((done[r] - first[r]) / (max_tokens - 1) for r in done),
        peak_kv_bytes=peak_blocks * per_block,
    )


def run_transformers(hf_model: torch.nn.Module, loaded: LoadedModel, prompts: list[list[int]], max_tokens: int) -> float:
    tokenizer = loaded.tokenizer
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    start = time.perf_counter()
    with torch.inference_mode():
        hf_model.generate(
            input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_tokens,
            min_new_tokens=max_tokens, do_sample=False, pad_token_id=pad,
        )
    return len(prompts) * max_tokens / (time.perf_counter() - start)


def contiguous_kv_bytes(loaded: LoadedModel, prompts: list[list[int]], max_tokens: int) -> int:
    """What a cache sized for the longest request, for every request, would take."""
    model = loaded.model
    per_token = KVCache.bytes_per_block(model.num_layers, 1, model.num_kv_heads, model.head_dim, model.dtype)
    return len(prompts) * (max(len(p) for p in prompts) + max_tokens) * per_token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--quick", action="store_true", help="concurrency 1 and 8, 32 new tokens")
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument(
        "--quantization", default="none", help="comma-separated: none (exact), int4, int8, w8a8; one engine each"
    )
    args = parser.parse_args()
    levels = [1, 8] if args.quick else [int(c) for c in args.concurrency.split(",")]
    max_tokens = 32 if args.quick else args.max_tokens
    variants = args.quantization.split(",")

    engines: dict[str, LLMEngine] = {}
    for variant in variants:
        quantization = None if variant == "none" else variant
        config = EngineConfig(max_num_seqs=max(levels), dtype=args.dtype, quantization=quantization)
        engines[variant] = engine = LLMEngine(config, load_model(None, dtype=args.dtype))
        run_engine(engine, chat_prompts(engine.loaded, 2), 8)  # warm-up: first-call allocations
    loaded = next(iter(engines.values())).loaded
    hf_model = None
    if not args.skip_transformers:
        hf_model = AutoModelForCausalLM.from_pretrained(loaded.model_dir, dtype=loaded.model.dtype).eval()
    print(f"SmolLM2-135M-Instruct, {loaded.model.dtype}, {torch.get_num_threads()} threads, {max_tokens} new tokens per request\n")
    header = (
        f"{'concurrency':>11}  {'weights':>7}  {'engine tok/s':>12}  {'transformers':>12}  {'ratio':>6}"
        f"  {'TTFT p50':>9}  {'TPOT p50':>9}  {'KV used':>9}  {'contig.':>9}"
    )
    print(header)
    print("-" * len(header))
    for level in levels:
        prompts = chat_prompts(loaded, level)
        theirs = run_transformers(hf_model, loaded, prompts, max_tokens) if hf_model is not None else float("nan")
        for variant, engine in engines.items():
            ours = run_engine(engine, prompts, max_tokens)
            print(
                f"{level:>11}  {variant:>7}  {ours.tokens_per_s:>12.1f}  {theirs:>12.1f}  {ours.tokens_per_s / theirs:>5.2f}x"
                f"  {ours.ttft_p50 * 1000:>7.0f}ms  {ours.tpot_p50 * 1000:>7.1f}ms"
                f"  {ours.peak_kv_bytes / 2**20:>7.1f}MB  {contiguous_kv_bytes(loaded, prompts, max_tokens) / 2**20:>7.1f}MB"
            )
    print(
        f"\nfor scale (reported, not measured here): llama.cpp single stream {LLAMA_CPP_SINGLE_STREAM:.0f} tok/s, "
        f"llama.cpp server at 8 concurrent {LLAMA_CPP_SERVER_8:.0f} tok/s in total"
    )


if __name__ == "__main__":
    main()
