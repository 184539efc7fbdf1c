"""Chaos: one model on two deployments, one of them failing at random, under 32 concurrent SDK clients.

Two loopback upstreams run in a child process (tests/support/fakes/faulty.py): a
steady one and a flaky one that, in the chaos phase, answers ``--fault-rate``
of its calls with a fault drawn evenly from: HTTP 500, HTTP 429 with
``retry-after-ms: 50``, a connection reset before any byte, and (for
streams) a cut after two events. ``switchyard serve`` (another child
process) has one model, ``chaos``, on both. Clients are the official
``openai`` SDK (async), half of the requests streamed.

First a baseline phase with no faults, then the chaos phase, same load;
printed side by side:

- errors a client saw, by kind. Target: none, except streams cut after
  their first event, and every one of those must reach the client as an
  error (the SDK raises), none as a clean finish. A stream that ends without
  a finish_reason and without an error is a silent truncation: target 0.
- extra upstream calls (retries and failovers, from x-switchyard-attempts),
  and how many answers came from the steady deployment after a failure;
- latency p50 / p99, and what the chaos added at p99.

    .venv/bin/python bench/chaos.py                      # ~40 s
    .venv/bin/python bench/chaos.py --seconds 5 --baseline-seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # for tests.support.fakes: the fault injector the tests use

import httpx  # noqa: E402
import openai  # noqa: E402

from tests.support.fakes.faulty import Fault, FaultyUpstream  # noqa: E402

MESSAGES = [{"role": "user", "content": "hi"}]


# --- the upstreams' process ------------------------------------------------------------------


def serve_upstreams(seed: int) -> None:
    """Child-process mode: print both ports, then read ``rate <x>`` lines on stdin until it closes."""
    rng = random.Random(seed)
    rate = [0.0]

    def chaos(payload: dict[str, Any]) -> Fault:
        if rng.random() >= rate[0]:
            return Fault.ok(events=5)
        kinds = ["500", "429", "reset", "cut" if payload.get("stream") else "500"]
        kind = rng.choice(kinds)
        if kind == "500":
            return Fault.status(500)
        if kind == "429":
            return Fault.status(429, retry_after_ms=50)
        return Fault.reset() if kind == "reset" else Fault.cut(after=2)

    with FaultyUpstream("steady") as steady, FaultyUpstream("flaky", default=chaos) as flaky:
        print(f"ports {steady.port} {flaky.port}", flush=True)
        for line in sys.stdin:
            if line.startswith("rate "):
                rate[0] = float(line.split()[1])
                print("ok", flush=True)


# --- the load ----------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    latencies: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    extra_calls: int = 0
    rescued: int = 0  # answered by the steady deployment after at least one failed call
    served_by: Counter[str] = field(default_factory=Counter)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def one_request(client: openai.AsyncOpenAI, stream: bool, phase: Phase) -> None:
    started = time.perf_counter()
    try:
        raw = await client.chat.completions.with_raw_response.create(model="chaos", messages=MESSAGES, stream=stream)
    except openai.APIError as error:
        phase.outcomes[f"error before the answer: {type(error).__name__}"] += 1
        return
    attempts = int(raw.headers.get("x-switchyard-attempts", "1"))
    provider = raw.headers.get("x-switchyard-provider", "?")
    phase.extra_calls += attempts - 1
    phase.served_by[provider] += 1
    if attempts > 1 and provider == "steady":
        phase.rescued += 1
    if not stream:
        raw.parse()
        phase.outcomes["ok"] += 1
    else:
        finish = None
        try:
            async for chunk in raw.parse():
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish = chunk.choices[0].finish_reason
        except openai.APIError:
            phase.outcomes["stream cut, reported as an error"] += 1
            return
        phase.outcomes["ok" if finish else "SILENTLY TRUNCATED stream"] += 1
    phase.latencies.append(time.perf_counter() - started)


async def run_phase(port: int, name: str, seconds: float, concurrency: int) -> Phase:
    phase = Phase(name)
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="chaos", max_retries=0, timeout=30)
    stop_at = time.monotonic() + seconds

    async def worker(index: int) -> None:
        stream = index % 2 == 0
        while time.monotonic() < stop_at:
            await one_request(client, stream, phase)
            stream = not stream

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    await client.close()
    return phase


# --- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


GATEWAY_CONFIG = """
server: {{host: 127.0.0.1, port: {port}, log_level: error}}
router:
  retries: {{attempts: 2, backoff_initial: 0.02, backoff_max: 0.2, retry_after_max: 1}}
  cooldown: {{failures: 5, window: 10, duration: 2}}
  stream_first_event_timeout: 10
  stream_stall_timeout: 10
providers:
  steady: {{type: custom, base_url: "http://127.0.0.1:{steady}/v1"}}
  flaky: {{type: custom, base_url: "http://127.0.0.1:{flaky}/v1"}}
models:
  chaos:
    deployments:
      - {{provider: flaky, model: chaos-flaky}}
      - {{provider: steady, model: chaos-steady}}
"""


def wait_until_up(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("the gateway exited at start")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("the gateway did not start")


def report(phases: list[Phase], fault_rate: float) -> None:
    baseline, chaos = phases
    kinds = sorted(set(baseline.outcomes) | set(chaos.outcomes), key=lambda k: (k != "ok", k))
    print(f"\n{'':44} {'baseline':>10} {f'chaos ({fault_rate:.0%})':>12}")
    total = [sum(p.outcomes.values()) for p in phases]
    print(f"{'requests':44} {total[0]:>10} {total[1]:>12}")
    for kind in kinds:
        print(f"  {kind:42} {baseline.outcomes[kind]:>10} {chaos.outcomes[kind]:>12}")
    print(f"{'extra upstream calls (retries + failovers)':44} {baseline.extra_calls:>10} {chaos.extra_calls:>12}")
    print(f"{'answered by steady after a failed call':44} {baseline.rescued:>10} {chaos.rescued:>12}")
    for p in phases:
        shares = ", ".join(f"{name} {count}" for name, count in sorted(p.served_by.items()))
        print(f"  served by ({p.name}): {shares}")
    for label, q in (("latency p50", 0.5), ("latency p99", 0.99)):
        print(f"{label + ' (ms)':44} {baseline.percentile(q) * 1000:>10.1f} {chaos.percentile(q) * 1000:>12.1f}")
    print(f"{'added p99 latency (ms)':44} {'':>10} {(chaos.percentile(0.99) - baseline.percentile(0.99)) * 1000:>12.1f}")
    visible = sum(n for k, n in chaos.outcomes.items() if k.startswith("error before"))
    silent = chaos.outcomes["SILENTLY TRUNCATED stream"] + baseline.outcomes["SILENTLY TRUNCATED stream"]
    print(f"\nclient-visible errors outside mid-stream cuts: {visible} (target 0)")
    print(f"silently truncated streams: {silent} (target 0)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20, help="length of the chaos phase")
    parser.add_argument("--baseline-seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--fault-rate", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--serve-upstreams", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstreams:
        serve_upstreams(args.seed)
        return 0

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    upstreams = subprocess.Popen(
        [sys.executable, __file__, "--serve-upstreams", "--seed", str(args.seed)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True,
    )  # fmt: skip
    gateway = None
    try:
        assert upstreams.stdout is not None and upstreams.stdin is not None
        steady, flaky = map(int, upstreams.stdout.readline().split()[1:])
        port = free_port()
        workdir = Path(tempfile.mkdtemp(prefix="switchyard-chaos-"))
        config = workdir / "chaos.yaml"
        config.write_text(GATEWAY_CONFIG.format(port=port, steady=steady, flaky=flaky))
        switchyard = Path(sys.executable).parent / "switchyard"
        gateway = subprocess.Popen([str(switchyard), "serve", "--config", str(config)], env=env, stdout=subprocess.DEVNULL)
        wait_until_up(port, gateway)

        def set_rate(rate: float) -> None:
            upstreams.stdin.write(f"rate {rate}\n")  # type: ignore[union-attr]
            upstreams.stdin.flush()  # type: ignore[union-attr]
            upstreams.stdout.readline()  # type: ignore[union-attr]

        print(f"{args.concurrency} concurrent openai SDK clients, half streaming; model `chaos` on two deployments")
        phases = []
        for name, seconds, rate in (("baseline", args.baseline_seconds, 0.0), ("chaos", args.seconds, args.fault_rate)):
            set_rate(rate)
            print(f"{name}: {seconds:g} s, fault rate {rate:.0%} on the flaky deployment ...", flush=True)
            phases.append(asyncio.run(run_phase(port, name, seconds, args.concurrency)))
        report(phases, args.fault_rate)
    finally:
        for process in (gateway, upstreams):
            if process is not None:
                process.terminate()
                process.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
