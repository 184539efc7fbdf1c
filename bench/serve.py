"""The local engine served through the gateway: streamed chat at concurrency 1, 8 and 32.

    .venv/bin/python bench/serve.py                 # ~3 minutes on 2 cores
    .venv/bin/python bench/serve.py --quick         # ~1 minute
    .venv/bin/python bench/serve.py --concurrency 1,8 --requests 16

Starts ``switchyard serve`` with no arguments (the bundled SmolLM2-135M-
Instruct) on a free loopback port, then for each concurrency keeps that
many streamed chat requests in flight (``stream_options.include_usage``,
``ignore_eos`` so every answer has ``--max-tokens`` tokens) and reports:

* output tokens/s over the phase;
* time to first token (TTFT) and time per output token (TPOT), p50 and p95;
* the server's resident memory after each phase (the KV pool is touched as
  it is used, so this shows what the traffic really needed);
* ``GET /health`` latency p50 and p99 while the engine is saturated, polled
  every 20 ms: the engine's step loop runs on its own thread, so the event
  loop should keep answering.

Side by side in the same run, the same prompts go through the engine
in-process (``LLMEngine``, no HTTP, no gateway), so the last column says
what serving costs: served tokens/s over in-process tokens/s.
All traffic stays on 127.0.0.1; every phase is bounded by its request count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or imported: procstat beside it
from procstat import rss_bytes  # noqa: E402

MODEL = "SmolLM2-135M-Instruct"
TOPICS = ("the sea", "a city at night", "winter", "a library", "trains", "the moon", "a garden", "music")


@dataclass
class Phase:
    concurrency: int
    tokens: int = 0
    seconds: float = 0.0
    ttft: list[float] = field(default_factory=list)
    tpot: list[float] = field(default_factory=list)
    health: list[float] = field(default_factory=list)
    errors: int = 0
    rss_mib: float = 0.0  # the server's resident memory at the end of the phase

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def prompt(index: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write a short poem about {TOPICS[index % len(TOPICS)]} (#{index})."}]


async def one_stream(http: httpx.AsyncClient, index: int, max_tokens: int, phase: Phase) -> None:
    body = {"model": MODEL, "messages": prompt(index), "stream": True, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream_options": {"include_usage": True}}  # fmt: skip
    started = time.perf_counter()
    first = last = None
    tokens = 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            phase.errors += 1
            await response.aread()
            return
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            elif event["choices"] and event["choices"][0]["delta"].get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
    if first is None or last is None:
        phase.errors += 1
        return
    phase.tokens += tokens
    phase.ttft.append(first - started)
    if tokens > 1:
        phase.tpot.append((last - first) / (tokens - 1))


async def poll_health(url: str, phase: Phase, stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        while not stop.is_set():
            started = time.perf_counter()
            await http.get("/health")
            phase.health.append(time.perf_counter() - started)
            await asyncio.sleep(0.02)


async def served_phase(url: str, concurrency: int, requests: int, max_tokens: int) -> Phase:
    phase = Phase(concurrency)
    queue = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:

        async def worker() -> None:
            for index in queue:
                await one_stream(http, index, max_tokens, phase)

        stop = asyncio.Event()
        health = asyncio.create_task(poll_health(url, phase, stop))
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        phase.seconds = time.perf_counter() - started
        stop.set()
        await health
    return phase


def in_process_tokens_per_second(engine: object, concurrency: int, requests: int, max_tokens: int) -> float:
    """The same prompts through the engine directly, ``concurrency`` in flight at a time."""
    from local_engine import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    tokenizer = engine.tokenizer  # type: ignore[attr-defined]
    pending = list(range(requests))
    in_flight = 0
    tokens = 0
    started = time.perf_counter()
    while pending or engine.has_unfinished_requests():  # type: ignore[attr-defined]
        while pending and in_flight < concurrency:
            index = pending.pop(0)
            text = tokenizer.apply_chat_template(prompt(index), add_generation_prompt=True, tokenize=False)
            engine.add_request(f"bench-{concurrency}-{index}", text, params)  # type: ignore[attr-defined]
            in_flight += 1
        for output in engine.step():  # type: ignore[attr-defined]
            if output.finished:
                in_flight -= 1
                tokens += len(output.outputs[0].token_ids)
    return tokens / (time.perf_counter() - started)


def start_gateway(workdir: Path) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "gateway", "serve", "--port", "0", "--log-level", "info"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=workdir)
    output: list[str] = []
    threading.Thread(target=lambda: output.extend(process.stdout), daemon=True).start()  # type: ignore[arg-type]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", "".join(output))
        if found:
            url = found.group(1)
            if httpx.get(f"{url}/health/ready").status_code == 200:
                return process, url
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("switchyard serve did not become ready:\n" + "".join(output)[-3000:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated (default 1,8,32)")
    parser.add_argument("--requests", type=int, default=0, help="requests per phase (default: 4 x concurrency, >= 8)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="32-token answers, 2 x concurrency requests")
    parser.add_argument("--no-in-process", action="store_true", help="skip the in-process comparison")
    args = parser.parse_args(argv)
    levels = [int(level) for level in args.concurrency.split(",")]
    if args.quick:
        args.max_tokens = 32
    if not all(1 <= level <= 256 for level in levels) or not 1 <= args.max_tokens <= 1024:
        parser.error("concurrency must be in [1, 256], --max-tokens in [1, 1024]")

    def requests_for(level: int) -> int:
        return args.requests or max(8, (2 if args.quick else 4) * level)

    with tempfile.TemporaryDirectory(prefix="switchyard-serve-bench-") as tmp:
        process, url = start_gateway(Path(tmp))
        try:
            asyncio.run(served_phase(url, 1, 2, 8))  # warm-up
            phases = []
            for level in levels:
                phases.append(asyncio.run(served_phase(url, level, requests_for(level), args.max_tokens)))
                phases[-1].rss_mib = rss_bytes(process.pid) / 2**20
        finally:
            process.terminate()
            process.wait(timeout=30)

    baseline: dict[int, float] = {}
    if not args.no_in_process:
        from local_engine import EngineConfig, LLMEngine

        engine = LLMEngine(EngineConfig(model="smollm2"))
        in_process_tokens_per_second(engine, 1, 2, 8)  # warm-up
        baseline = {level: in_process_tokens_per_second(engine, level, requests_for(level), args.max_tokens) for level in levels}

    print(f"\nSwitchyard serving bench -- {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
          f"{MODEL}, streamed chat, {args.max_tokens} output tokens per request (ignore_eos)\n")  # fmt: skip
    header = ("concurrency", "requests", "tok/s", "TTFT p50", "TTFT p95", "TPOT p50", "TPOT p95",
              "/health p50", "/health p99", "errors", "server RSS", "in-process tok/s", "served/in-process")  # fmt: skip
    rows = []
    for phase in phases:
        reference = baseline.get(phase.concurrency)
        rows.append((
            str(phase.concurrency), str(len(phase.ttft) + phase.errors), f"{phase.tokens_per_second:.1f}",
            f"{1000 * percentile(phase.ttft, 50):.0f} ms", f"{1000 * percentile(phase.ttft, 95):.0f} ms",
            f"{1000 * percentile(phase.tpot, 50):.1f} ms", f"{1000 * percentile(phase.tpot, 95):.1f} ms",
            f"{1000 * percentile(phase.health, 50):.1f} ms", f"{1000 * percentile(phase.health, 99):.1f} ms",
            str(phase.errors), f"{phase.rss_mib:.0f} MiB", f"{reference:.1f}" if reference else "-",
            f"{phase.tokens_per_second / reference:.2f}x" if reference else "-",
        ))  # fmt: skip
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(len(header))]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths)))
    health_p99 = max(percentile(phase.health, 99) for phase in phases)
    verdict = "ok" if health_p99 <= 0.05 else "MISS"
    print(f"\n/health p99 under load, worst phase: {1000 * health_p99:.1f} ms (target <= 50 ms: {verdict})")
    if any(phase.health for phase in phases):
        print(f"/health samples: {sum(len(p.health) for p in phases)}, median of medians "
              f"{1000 * statistics.median(percentile(p.health, 50) for p in phases):.1f} ms")  # fmt: skip
    return 1 if any(phase.errors for phase in phases) else 0


if __name__ == "__main__":
    raise SystemExit(main())
