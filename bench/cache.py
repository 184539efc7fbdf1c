"""What the response cache costs on the request path, in process: a lookup, a put, folding a stream, a replay.

    .venv/bin/python bench/cache.py                # in-process store, and Redis if redis-server is on PATH
    .venv/bin/python bench/cache.py --no-redis

Each figure is the median of ``--rounds`` runs of ``--calls`` calls, printed
side by side with what the cache saves: a hosted call's round trip is tens
to hundreds of milliseconds, so a hit's cost is read against that.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.cache import CachedAnswer, ResponseCache  # noqa: E402
from gateway.cache.replay import ChunkFolder, replay_chunks  # noqa: E402
from gateway.cache.store import CacheStore, MemoryStore  # noqa: E402
from gateway.config import CacheConfig  # noqa: E402
from providers.wire import Usage  # noqa: E402

PAYLOAD = {"model": "m", "temperature": 0, "max_tokens": 256,
           "messages": [{"role": "system", "content": "You are a helpful assistant. " * 20},
                        {"role": "user", "content": "What is the capital of France? Answer in one sentence."}]}  # fmt: skip
ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris is the capital. " * 20},
                       "finish_reason": "stop", "logprobs": None}],
          "usage": {"prompt_tokens": 120, "completion_tokens": 100, "total_tokens": 220}}  # fmt: skip
CHUNKS = [orjson.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                        "choices": [{"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}]})
          for i in range(200)]  # fmt: skip


async def per_call(call: Callable[[], Awaitable[object]], calls: int, rounds: int) -> float:
    """Median µs per call."""
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            await call()
        samples.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(samples)


async def measure_store(name: str, store: CacheStore, calls: int, rounds: int) -> list[tuple[str, float]]:
    cache = ResponseCache({"m": CacheConfig(mode="exact")}, store)
    kept = CachedAnswer(ANSWER, Usage(120, 100), "openai", "gpt-4o-mini")
    miss = await cache.lookup("m", PAYLOAD, "team:a", "")
    cache.keep("m", miss, kept)
    await cache.settled()

    async def hit() -> object:
        return await cache.lookup("m", PAYLOAD, "team:a", "")

    async def missed() -> object:
        return await cache.lookup("m", {**PAYLOAD, "seed": time.perf_counter_ns()}, "team:a", "")

    async def put() -> object:
        cache.keep("m", miss, kept)
        return await cache.settled()

    rows = [(f"{name}: lookup, hit", await per_call(hit, calls, rounds)),
            (f"{name}: lookup, miss", await per_call(missed, calls, rounds)),
            (f"{name}: put (awaited here; off the request path in the gateway)", await per_call(put, calls, rounds))]  # fmt: skip
    await store.aclose()
    return rows


async def measure_semantic(calls: int, rounds: int) -> list[tuple[str, float]]:
    from local_engine.embeddings import AsyncEmbedder

    embedder = AsyncEmbedder("all-minilm-l6-v2")
    await embedder.start()
    await embedder.wait_loaded()
    cache = ResponseCache({"m": CacheConfig(mode="semantic")}, MemoryStore(), {"m": embedder})
    kept = CachedAnswer(ANSWER, Usage(120, 100), "openai", "gpt-4o-mini")
    for index in range(100):  # a scope with 100 questions kept
        payload = {**PAYLOAD, "messages": [*PAYLOAD["messages"][:-1], {"role": "user", "content": f"question {index}"}]}
        cache.keep("m", await cache.lookup("m", payload, "", ""), kept)
    await cache.settled()
    phrased = {**PAYLOAD, "messages": [*PAYLOAD["messages"][:-1], {"role": "user", "content": "Which city is France's capital?"}]}

    async def semantic() -> object:
        return await cache.lookup("m", phrased, "", "")

    figure = await per_call(semantic, max(calls // 50, 10), rounds)
    await embedder.stop()
    return [("semantic, memory: lookup past the exact key (embed + search of 100)", figure)]


async def measure_streams(calls: int, rounds: int) -> list[tuple[str, float]]:
    async def fold() -> object:
        folder = ChunkFolder()
        for chunk in CHUNKS:
            folder.read([chunk])
        return folder.completion()

    async def replay() -> object:
        return replay_chunks(ANSWER)

    per_stream = await per_call(fold, max(calls // 20, 10), rounds)
    return [("fold a 200-chunk stream (per stream)", per_stream),
            ("   ... per chunk", per_stream / len(CHUNKS)),
            ("replay a kept answer as chunks", await per_call(replay, calls, rounds))]  # fmt: skip


def redis_server() -> tuple[subprocess.Popen[bytes], str, str] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    directory = tempfile.mkdtemp()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", directory],
                               stdout=subprocess.DEVNULL)  # fmt: skip
    time.sleep(0.3)
    return process, f"redis://127.0.0.1:{port}/0", directory


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--no-semantic", action="store_true")
    args = parser.parse_args()
    rows = await measure_store("exact, memory", MemoryStore(), args.calls, args.rounds)
    served = None if args.no_redis else redis_server()
    try:
        if served is not None:
            from gateway.cache.redis_store import RedisStore

            rows += await measure_store("exact, Redis on 127.0.0.1", RedisStore(served[1]), args.calls // 4, args.rounds)
    finally:
        if served is not None:
            served[0].terminate()
            served[0].wait()
            shutil.rmtree(served[2], ignore_errors=True)
    rows += await measure_streams(args.calls, args.rounds)
    if not args.no_semantic:
        rows += await measure_semantic(args.calls, args.rounds)
    width = max(len(name) for name, _ in rows)
    print(f"{'what':<{width}}  µs per call")
    for name, micros in rows:
        print(f"{name:<{width}}  {micros:10.1f}")
    print("\nA hosted call this saves: 100,000-2,000,000 µs (first token to last); a hit costs the lookup above.")


if __name__ == "__main__":
    asyncio.run(main())
