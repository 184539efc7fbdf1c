"""One large embeddings request: a single forward pass over all its inputs against the embedder's slices.

    .venv/bin/python bench/embeddings.py                  # 2,000 inputs, ~2 minutes on 2 cores
    .venv/bin/python bench/embeddings.py --inputs 500

Each variant runs in a fresh process (peak RSS is per process), on the
bundled all-MiniLM-L6-v2 and the same texts:

* ``one pass``: ``EmbeddingModel.embed`` over every input at once, what the
  embedder did before it sliced requests (memory grows with the request);
* ``sliced``: ``AsyncEmbedder.embed``, 64 inputs a forward pass, with one
  small request sent while the large one runs (it waits one slice, not the
  whole request).

Printed per variant: wall time, peak RSS above the loaded model, and the
small request's latency; the vectors of both variants are compared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time

import torch


def texts(count: int) -> list[str]:
    return [f"Sentence number {i} says something about rivers, markets and winter light. " * 3 for i in range(count)]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one_pass(count: int) -> dict[str, object]:
    from local_engine.embeddings import EmbeddingModel

    model = EmbeddingModel("all-minilm-l6-v2")
    loaded = peak_rss_mib()
    started = time.perf_counter()
    vectors = model.embed(texts(count)).vectors
    return {"seconds": time.perf_counter() - started, "rss_mib": peak_rss_mib() - loaded, "small_s": None,
            "checksum": float(vectors.sum())}  # fmt: skip


def run_sliced(count: int) -> dict[str, object]:
    from local_engine.embeddings import AsyncEmbedder

    async def main() -> dict[str, object]:
        embedder = AsyncEmbedder("all-minilm-l6-v2")
        await embedder.start()
        await embedder.wait_loaded()
        loaded = peak_rss_mib()
        started = time.perf_counter()
        large = asyncio.create_task(embedder.embed(texts(count)))
        await asyncio.sleep(0.05)
        small_started = time.perf_counter()
        await embedder.embed(["a small request"])
        small = time.perf_counter() - small_started
        vectors = (await large).vectors
        seconds = time.perf_counter() - started
        await embedder.stop()
        return {"seconds": seconds, "rss_mib": peak_rss_mib() - loaded, "small_s": small,
                "checksum": float(vectors.sum())}  # fmt: skip

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=2000)
    parser.add_argument("--variant", choices=["one-pass", "sliced"], help=argparse.SUPPRESS)  # the child's side
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    if args.variant:
        result = run_one_pass(args.inputs) if args.variant == "one-pass" else run_sliced(args.inputs)
        print(json.dumps(result))
        return
    results = {}
    for variant in ("one-pass", "sliced"):
        child = subprocess.run(
            [sys.executable, __file__, "--inputs", str(args.inputs), "--variant", variant],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        results[variant] = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"one embeddings request of {args.inputs} inputs, all-MiniLM-L6-v2, {torch.get_num_threads()} threads")
    print(f"  {'variant':>9} {'seconds':>8} {'peak RSS above the model':>25} {'small request waited':>21}")
    for variant, result in results.items():
        small = "-" if result["small_s"] is None else f"{result['small_s']:.2f} s"
        print(f"  {variant:>9} {result['seconds']:8.1f} {result['rss_mib']:22.0f} MiB {small:>21}")
    one, sliced = results["one-pass"], results["sliced"]
    print(f"  memory: sliced / one pass = {sliced['rss_mib'] / max(one['rss_mib'], 1):.2f}x;"
          f" time: {sliced['seconds'] / one['seconds']:.2f}x;"
          f" same vectors: {abs(one['checksum'] - sliced['checksum']) < 1e-2}")  # fmt: skip


if __name__ == "__main__":
    main()
