"""Decode-step time of the engine's forward against transformers' on the same weights.

For each dtype and batch size: every sequence gets a ``--context``-token
prompt, then ``--steps`` greedy decode steps run and are timed. One engine
step is what the model runner will do: build the attention metadata, run
the forward, compute logits for the sampled rows, take the argmax. One
transformers step is ``model(next_tokens, past_key_values=cache)`` plus the
argmax; greedy ``generate()`` is timed too (per step, its prefill subtracted).
The machine may be shared: compare numbers from the same run.

    .venv/bin/python bench/engine_forward.py --batches 1,8,32 --dtypes bfloat16,float32
    .venv/bin/python bench/engine_forward.py --profile --batches 1,32 --dtypes bfloat16
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from transformers import AutoModelForCausalLM, DynamicCache

from local_engine.attention import AttentionMetadata
from local_engine.kv_cache import KVCache
from local_engine.loader import load_model
from local_engine.model import LlamaForCausalLM

BLOCK_SIZE = 16


def engine_decode(
    model: LlamaForCausalLM, prompts: torch.Tensor, steps: int
) -> tuple[float, float, Callable[[], None]]:
    """(seconds per decode step, seconds of that in AttentionMetadata.build, one more step to profile)."""
    batch, context = prompts.shape
    blocks_per_seq = -(-(context + steps + 8) // BLOCK_SIZE)
    cache = KVCache(
        model.num_layers,
        batch * blocks_per_seq,
        BLOCK_SIZE,
        model.num_kv_heads,
        model.head_dim,
        model.dtype,
        model.device,
    )
    tables = [list(range(i * blocks_per_seq, (i + 1) * blocks_per_seq)) for i in range(batch)]
    lengths = [context] * batch

    metadata = AttentionMetadata.build([context] * batch, lengths, tables, BLOCK_SIZE, model.device)
    hidden = model(prompts.reshape(-1).to(model.device), metadata.positions, metadata, cache)
    last_rows = torch.arange(batch, device=model.device) * context + context - 1
    next_ids = model.compute_logits(hidden[last_rows]).argmax(-1)

    def step() -> None:
        nonlocal next_ids
        for i in range(batch):
            lengths[i] += 1
        metadata = AttentionMetadata.build([1] * batch, lengths, tables, BLOCK_SIZE, model.device)
        hidden = model(next_ids, metadata.positions, metadata, cache)
        next_ids = model.compute_logits(hidden).argmax(-1)
        next_ids.tolist()  # the runner hands token ids back to Python

    step()  # warm-up
    build_time = 0.0
    started = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        AttentionMetadata.build([1] * batch, lengths, tables, BLOCK_SIZE, model.device)
        build_time += time.perf_counter() - t0
        step()
    elapsed = time.perf_counter() - started - build_time  # the extra builds were only to time build()
    return elapsed / steps, build_time / steps, step


@torch.inference_mode()
def transformers_decode(hf_model: torch.nn.Module, prompts: torch.Tensor, steps: int) -> float:
    cache = DynamicCache(config=hf_model.config)
    out = hf_model(prompts, past_key_values=cache, use_cache=True, logits_to_keep=1)
    next_ids = out.logits[:, -1].argmax(-1, keepdim=True)
    hf_model(next_ids, past_key_values=cache, use_cache=True)  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        out = hf_model(next_ids, past_key_values=cache, use_cache=True)
        next_ids = out.logits[:, -1].float().argmax(-1, keepdim=True)
        next_ids.tolist()
    return (time.perf_counter() - started) / steps


@torch.inference_mode()
def transformers_generate(hf_model: torch.nn.Module, prompts: torch.Tensor, steps: int) -> float:
    """Per-step time of greedy generate(), its prefill subtracted."""

    def run(num_tokens: int) -> float:
        started = time.perf_counter()
        hf_model.generate(
            prompts, max_new_tokens=num_tokens, min_new_tokens=num_tokens, do_sample=False, pad_token_id=0
        )
        return time.perf_counter() - started

    run(2)  # warm-up
    return (run(steps + 1) - run(1)) / steps


def profile(step: Callable[[], None], rows: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=None, help="model directory or .gguf (default: the bundled SmolLM2)")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--context", type=int, default=128, help="prompt tokens per sequence")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top ops for one engine step")
    parser.add_argument("--pack", choices=["auto", "off"], default="auto", help="off: plain F.linear weights")
    parser.add_argument("--engine-only", action="store_true", help="skip the transformers timings")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    print(f"threads={torch.get_num_threads()} context={args.context} steps={args.steps}")
    for dtype in args.dtypes.split(","):
        started = time.perf_counter()
        loaded = load_model(args.source, dtype=dtype)
        print(f"\n{loaded.name} {dtype}: load_model {time.perf_counter() - started:.1f}s")
        hf_model = AutoModelForCausalLM.from_pretrained(
            loaded.model_dir, dtype=loaded.model.dtype, local_files_only=True
        ).eval()
        model = loaded.model
        if args.pack == "off":
            model = LlamaForCausalLM.from_transformers(hf_model, model.dtype, model.device, pack=False)
        # ms per decode step; "x" columns: transformers' time over the engine's.
        print("  batch  engine (build)   hf forward  hf generate   x forward  x generate  engine tok/s")
        for batch in map(int, args.batches.split(",")):
            prompts = torch.randint(0, loaded.model.vocab_size, (batch, args.context))
            ours, build, step = engine_decode(model, prompts, args.steps)
            forward = generate = float("nan")
            if not args.engine_only:
                forward = transformers_decode(hf_model, prompts, args.steps)
                generate = transformers_generate(hf_model, prompts, args.steps)
            print(
                f"  {batch:5d} {ours * 1e3:7.2f} ({build * 1e3:4.2f}) {forward * 1e3:11.2f} {generate * 1e3:12.2f}"
                f" {forward / ours:10.2f}x {generate / ours:10.2f}x {batch / ours:13.0f}"
            )
            if args.profile:
                profile(step, rows=25)
        del hf_model, loaded, model


if __name__ == "__main__":
    main()
