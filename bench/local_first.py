"""``routing: local_first`` against local-only and hosted-only, under an open-loop load above the engine's capacity.

    .venv/bin/python bench/local_first.py                      # ~80 s on 2 cores: 120 requests per arm
    .venv/bin/python bench/local_first.py --quick              # ~25 s smoke run (numbers are rough)
    .venv/bin/python bench/local_first.py --arms hosted,local_first --max-running 4,8,16 --rounds 3
    .venv/bin/python bench/local_first.py --sweep 1,2,4,8,16,32 --rounds 3   # the engine alone, closed loop

Two processes besides this one, on 127.0.0.1: a fake hosted upstream (this
file run with ``--serve-hosted``: an OpenAI-compatible server whose streams
start after a FIXED ``--hosted-ttft-ms`` and then send ``--hosted-tokens``
events ``--hosted-tpot-ms`` apart, whatever the load), and one
``switchyard serve`` with three models, one per arm:

    local        the bundled SmolLM2-135M-Instruct only (type: local)
    hosted       the fake only (type: custom)
    local_first  routing: local_first over both, with --max-running / --max-waiting

Each arm gets the same arrival schedule (Poisson at ``--rate``, seeded, or
``--arrivals fixed``) of streamed chat requests, one arm after the other
(the order turns from round to round), after the engine has drained. A
request is a task of its own, so a slow answer never holds the next one
back: the load is open-loop. Per arm: the share answered locally (from
``x-switchyard-provider``), TTFT p50/p95 (to the first content event), the
TPOT of local answers, duration, errors, the route reasons, and how busy the
engine was (``/metrics``' running sequences, sampled every 100 ms while
requests still arrive). Before each round, a few local answers one at a
time give the single-stream TPOT that local answers under load are read
against. ``--max-running 4,8`` makes one local_first model per value, in the
same run: this machine drifts by +-20% over minutes, more than most of the
differences between two values, so compare them only within one run.
``--sweep`` measures the engine alone instead (closed loop at each
concurrency: TTFT, TPOT, tokens/s), the figures that ``max_running`` is
chosen from.

Targets (the issue's): local_first's TTFT p95 no worse than hosted-only's,
while the engine stays busy (>= 90% of the samples with a sequence running),
and local answers' TPOT p50 within 1.5x of a single stream's.

Other processes on the same 2 cores change every figure here (a test run
beside the bench made TPOT 10x worse): the table prints the CPU that
processes outside the bench used meanwhile, and ``--wait-quiet`` /
``--retry-disturbed`` wait for, and run again, phases that others disturbed.
Everything started is stopped at the end, on Ctrl-C and on errors too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from fast_upstream import Canned, UpstreamProtocol
from loadgen import percentile
from procstat import cpu_time
from servers import HERE, Servers, _environment, _free_port, _http_get_ok, _read_line
from workload import HOST

from gateway.routing.local_first import HAS_ROOM
from providers.wire import Header

ARMS = ("local", "hosted", "local_first")
LOCAL_MODEL = "SmolLM2-135M-Instruct"
QUESTIONS = (
    "What is the capital of France?", "Write a haiku about the sea.", "List three uses of copper.",
    "Give me a short, friendly reminder to drink water.", "Translate 'good morning' into Spanish.",
    "Name two planets and one fact about each.", "What is 17 times 23?", "Describe a library at night.",
)  # fmt: skip
TTFT_RATIO_TARGET = 1.0  # local_first p95 / hosted-only p95
BUSY_TARGET = 0.9  # share of samples with >= 1 sequence running, while requests arrive
TPOT_RATIO_TARGET = 1.5  # local answers' TPOT p50 / single stream's
SAMPLE_EVERY = 0.1  # seconds between /metrics samples
SLACK = 0.05  # seconds: a request is routed within this long after it is sent (loopback, idle client)
DISTURBED = 0.2  # cores used by processes outside the bench past which a phase's figures are not to be trusted


# --- the fake hosted upstream (a child process) -----------------------------------------------------


class HostedProtocol(UpstreamProtocol):
    """fast_upstream's connection, with a fixed wait before a stream's first event."""

    def __init__(self, canned: Canned, chunk_delay: float, first_delay: float) -> None:
        super().__init__(canned, chunk_delay)
        self.first_delay = first_delay

    async def _stream(self) -> None:
        try:
            await asyncio.sleep(self.first_delay)
        except asyncio.CancelledError:
            self.streaming = None
            return
        if self.transport is None or self.transport.is_closing():
            self.streaming = None
            return
        await super()._stream()


async def serve_hosted(port: int, tokens: int, ttft: float, tpot: float, lifetime: float) -> None:
    loop = asyncio.get_running_loop()
    canned = Canned(tokens)
    server = await loop.create_server(lambda: HostedProtocol(canned, tpot, ttft), HOST, port, backlog=1024)
    print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    deadline = time.monotonic() + lifetime  # bounded even if the bench is killed
    async with server:
        while not stop.is_set() and time.monotonic() < deadline and os.getppid() != 1:
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                pass


# --- the processes -----------------------------------------------------------------------------------


class Processes(Servers):
    """The fake hosted upstream and one gateway with a model per arm; ``stop`` (from Servers) ends both."""

    def start_hosted(self, args: argparse.Namespace) -> None:
        self.upstream = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve-hosted", "--hosted-tokens", str(args.hosted_tokens),
             "--hosted-ttft-ms", str(args.hosted_ttft_ms), "--hosted-tpot-ms", str(args.hosted_tpot_ms),
             "--lifetime", str(self.lifetime)],
            stdout=subprocess.PIPE, stderr=self._log("hosted.log"), env=_environment(), cwd=HERE,
        )  # fmt: skip
        self._children.append(self.upstream)
        assert self.upstream.stdout is not None
        line = _read_line(self.upstream.stdout, timeout=15)
        if not line.startswith("listening on "):
            raise RuntimeError(f"fake hosted upstream did not start: {line!r}; see {self.workdir / 'hosted.log'}")
        self.upstream_port = int(line.split()[-1])

    def start_switchyard(self, args: argparse.Namespace, arms: list[str]) -> int:
        port = _free_port()
        config = self.workdir / "config.yaml"
        config.write_text(gateway_config(port, self.upstream_port, args, arms))
        env = _environment()
        command = [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--log-level", args.log_level]
        if args.gateway_src is not None:  # a scratch copy shadows the installed (editable) package
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.gateway_src), env.get("PYTHONPATH")]))
        process = subprocess.Popen(command, stdout=self._log("gateway.log"), stderr=subprocess.STDOUT, env=env,
                                   cwd=self._own_directory("gateway"))  # fmt: skip
        self._children.append(process)
        deadline = time.monotonic() + 300  # loading the model takes most of it
        while time.monotonic() < deadline and process.poll() is None:
            if _http_get_ok(port, "/health/ready"):
                self.gateways["gateway"] = (process, port)
                return port
            time.sleep(0.2)
        tail = (self.workdir / "gateway.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"switchyard serve was not ready within 300 s (exit {process.poll()}):\n{tail}")


def gateway_config(port: int, hosted_port: int, args: argparse.Namespace, arms: list[str]) -> str:
    local = f"{{provider: local, model: {LOCAL_MODEL}}}"
    hosted = "{provider: hosted, model: fake-hosted}"
    deployments = {"local": [local], "hosted": [hosted]}
    lines = [
        f"server: {{host: {HOST}, port: {port}, usage_ledger: false}}",
        "providers:",
        f"  local: {{type: local, model: smollm2, max_num_seqs: {args.max_num_seqs}}}",
        f"  hosted: {{type: custom, base_url: 'http://{HOST}:{hosted_port}/v1', api_key: x}}",
        "models:",
    ]
    for arm in arms:
        lines.append(f"  {arm}:")
        if is_local_first(arm):
            lines.append("    routing: local_first")
            lines.append(f"    local_first: {{max_running: {max_running_of(arm, args)}, max_waiting: {args.max_waiting}}}")
        lines.append("    deployments:")
        lines += [f"      - {d}" for d in deployments.get(arm, [local, hosted])]
    return "\n".join(lines) + "\n"


def is_local_first(arm: str) -> bool:
    return arm.startswith("local_first")


def max_running_of(arm: str, args: argparse.Namespace) -> int:
    """A local_first arm's max_running: ``local_first-8`` when several are compared, else the one given."""
    return int(arm.rsplit("-", 1)[1]) if "-" in arm else args.max_running[0]


def expand_arms(names: list[str], args: argparse.Namespace) -> list[str]:
    """``--arms`` with ``local_first`` made one arm per ``--max-running`` value (one model each)."""
    arms = []
    for name in names:
        if name == "local_first" and len(args.max_running) > 1:
            arms += [f"local_first-{value}" for value in args.max_running]
        else:
            arms.append(name)
    return arms


# --- the load ----------------------------------------------------------------------------------------


@dataclass
class Answer:
    sent: float  # perf_counter seconds
    status: int = 0
    provider: str = ""
    reason: str = ""
    ttft: float | None = None  # seconds to the first content event
    last_content: float | None = None  # perf_counter of the last content event
    done: float | None = None  # perf_counter when the stream ended
    tokens: int = 0  # usage's completion_tokens, else content events
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def local(self) -> bool:
        return self.provider == "local"

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.last_content is None or self.tokens < 2:
            return None
        return (self.last_content - self.sent - self.ttft) / (self.tokens - 1)


@dataclass
class Phase:
    arm: str
    answers: list[Answer] = field(default_factory=list)
    elapsed: float = 0.0
    arrivals_end: float = 0.0  # seconds from the phase's start to the last arrival
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (seconds, running, waiting)
    others_cpu: float = 0.0  # cores used by processes outside the bench, on average


def request_body(index: int, max_tokens: int, ignore_eos: bool, model: str) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}],
            "stream": True, "max_tokens": max_tokens, "temperature": 0, "stream_options": {"include_usage": True}}  # fmt: skip
    if ignore_eos:
        body["ignore_eos"] = True  # every local answer max_tokens long; the fake ignores it
    return body


async def one_stream(http: httpx.AsyncClient, body: dict, timeout: float) -> Answer:
    answer = Answer(time.perf_counter())
    events = 0
    try:
        async with asyncio.timeout(timeout):
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                answer.status = response.status_code
                answer.provider = response.headers.get(Header.PROVIDER, "")
                answer.reason = response.headers.get(Header.ROUTE_REASON, "")
                if response.status_code != 200:
                    answer.error = f"HTTP {response.status_code}"
                    await response.aread()
                    return answer
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if event.get("usage"):
                        answer.tokens = event["usage"].get("completion_tokens") or 0
                    if event.get("choices") and event["choices"][0].get("delta", {}).get("content"):
                        now = time.perf_counter()
                        if answer.ttft is None:
                            answer.ttft = now - answer.sent
                        answer.last_content = now
                        events += 1
    except (httpx.HTTPError, TimeoutError, ValueError) as exc:
        answer.error = type(exc).__name__
        return answer
    answer.done = time.perf_counter()
    answer.tokens = answer.tokens or events
    if answer.ttft is None:
        answer.error = "no content"
    return answer


def arrival_offsets(count: int, rate: float, kind: str, seed: int) -> list[float]:
    """Seconds from the phase's start at which each request is sent; the same list for every arm."""
    if kind == "fixed":
        return [i / rate for i in range(count)]
    rng = random.Random(seed)
    offsets, at = [], 0.0
    for _ in range(count):
        offsets.append(at)
        at += rng.expovariate(rate)
    return offsets


def engine_gauges(text: str) -> tuple[float, float]:
    """(running, waiting) of the ``local`` engine in a /metrics page; NaN when it reports none."""
    found = {"running": float("nan"), "waiting": float("nan")}
    for line in text.splitlines():
        for key in found:
            if line.startswith(f'switchyard_engine_requests_{key}{{provider="local"}}'):
                found[key] = float(line.rsplit(" ", 1)[1])
    return found["running"], found["waiting"]


async def sample_engine(http: httpx.AsyncClient, phase: Phase, start: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        at = time.perf_counter()
        try:
            running, waiting = engine_gauges((await http.get("/metrics")).text)
            phase.samples.append((at - start, running, waiting))
        except httpx.HTTPError:
            pass
        try:
            await asyncio.wait_for(stop.wait(), timeout=max(0.0, SAMPLE_EVERY - (time.perf_counter() - at)))
        except TimeoutError:
            pass


async def drain(http: httpx.AsyncClient, limit: float = 120.0) -> None:
    """Wait until the engine runs nothing and queues nothing, so an arm does not inherit the last one's backlog."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        running, waiting = engine_gauges((await http.get("/metrics")).text)
        if not running and not waiting:  # NaN (no engine stats) counts as idle too
            return
        await asyncio.sleep(0.2)


def busy_cpu(pids: list[int]) -> tuple[float, float]:
    """(seconds of CPU the whole machine spent, seconds the bench's own processes spent), to subtract."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(v) for v in fields]
    machine = (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    ours = time.process_time() + sum(cpu_time(pid).ticks for pid in pids)
    return machine, ours


async def wait_quiet(pids: list[int], limit: float) -> None:
    """Up to ``limit`` seconds, until 3 s pass in which others use under 0.1 cores (on a shared machine)."""
    deadline = time.monotonic() + limit
    quiet = 0
    while time.monotonic() < deadline and quiet < 3:
        machine0, ours0 = busy_cpu(pids)
        await asyncio.sleep(1.0)
        machine1, ours1 = busy_cpu(pids)
        quiet = quiet + 1 if (machine1 - machine0) - (ours1 - ours0) < 0.1 else 0


async def run_phase(port: int, arm: str, offsets: list[float], args: argparse.Namespace, pids: list[int]) -> Phase:
    phase = Phase(arm, arrivals_end=offsets[-1])
    limits = httpx.Limits(max_connections=len(offsets) + 8, max_keepalive_connections=len(offsets) + 8)
    async with (
        httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=args.request_timeout, limits=limits,
                          trust_env=False) as http,
        httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=10, trust_env=False) as probe,
    ):  # fmt: skip
        await drain(probe)
        await wait_quiet(pids, args.wait_quiet)
        stop = asyncio.Event()
        machine0, ours0 = busy_cpu(pids)
        start = time.perf_counter()
        sampler = asyncio.create_task(sample_engine(probe, phase, start, stop))

        async def send(index: int, offset: float) -> Answer:
            await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
            body = request_body(index, args.max_tokens, args.ignore_eos, arm)
            return await one_stream(http, body, args.request_timeout)

        phase.answers = list(await asyncio.gather(*(send(i, at) for i, at in enumerate(offsets))))
        phase.elapsed = time.perf_counter() - start
        stop.set()
        await sampler
        machine1, ours1 = busy_cpu(pids)
        phase.others_cpu = max(0.0, (machine1 - machine0) - (ours1 - ours0)) / phase.elapsed
    return phase


async def single_stream(port: int, args: argparse.Namespace, pids: list[int]) -> Level:
    """Local answers one after another: the TPOT local answers under load are read against."""
    for _ in range(1 + args.retry_disturbed):
        level = await sweep_level(port, 1, args.single_streams, args, pids)
        if level.others_cpu <= DISTURBED:
            break
    if not any(a.ok and a.tpot is not None for a in level.answers):
        raise RuntimeError(f"no local answer in the single-stream run: {[a.error for a in level.answers]}")
    return level


async def warm_up(port: int, arms: list[str], args: argparse.Namespace) -> None:
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=args.request_timeout, trust_env=False) as http:
        for arm in arms:
            for i in range(2):
                answer = await one_stream(http, request_body(i, 8, args.ignore_eos, arm), args.request_timeout)
                if not answer.ok:
                    raise RuntimeError(f"warm-up on {arm}: {answer.error} ({answer.status})")


@dataclass
class Level:
    concurrency: int
    answers: list[Answer]
    elapsed: float
    others_cpu: float


async def sweep_level(port: int, concurrency: int, requests: int, args: argparse.Namespace, pids: list[int]) -> Level:
    """Closed loop on the local model: ``concurrency`` streams in flight, ``requests`` in all."""
    indices = iter(range(requests))
    answers: list[Answer] = []
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=args.request_timeout, limits=limits,
                                 trust_env=False) as http:  # fmt: skip
        await drain(http)
        await wait_quiet(pids, args.wait_quiet)

        async def worker() -> None:
            for index in indices:
                answers.append(await one_stream(http, request_body(index, args.max_tokens, args.ignore_eos, "local"),
                                                args.request_timeout))  # fmt: skip

        machine0, ours0 = busy_cpu(pids)
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        machine1, ours1 = busy_cpu(pids)
    return Level(concurrency, answers, elapsed, max(0.0, (machine1 - machine0) - (ours1 - ours0)) / elapsed)


async def sweep(port: int, args: argparse.Namespace, pids: list[int]) -> list[Level]:
    await warm_up(port, ["local"], args)
    concurrencies = [int(c) for c in args.sweep.split(",")]
    pooled = {c: Level(c, [], 0.0, 0.0) for c in concurrencies}
    for round_index in range(args.rounds):  # the order turns each round, so drift hits every level alike
        for c in concurrencies if round_index % 2 == 0 else concurrencies[::-1]:
            level = await sweep_level(port, c, max(8, 4 * c), args, pids)
            print(f"  round {round_index + 1} c={c}: others' CPU {level.others_cpu:.2f} cores", file=sys.stderr, flush=True)
            pooled[c].answers += level.answers
            pooled[c].elapsed += level.elapsed
            pooled[c].others_cpu = max(pooled[c].others_cpu, level.others_cpu)
    return list(pooled.values())


def print_sweep(levels: list[Level], args: argparse.Namespace) -> None:
    print(f"\nlocal engine through switchyard serve -- {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
          f"{LOCAL_MODEL}, closed loop, {args.rounds} round(s), streamed chat, max_tokens {args.max_tokens}"
          f"{' (ignore_eos)' if args.ignore_eos else ''}, temperature 0\n")  # fmt: skip
    header = ("concurrency", "answers", "tok/s", "TTFT p50", "TTFT p95", "TPOT p50", "TPOT p95", "TPOT p50 / c=1",
              "errors", "others' CPU")  # fmt: skip
    rows, base, fits = [], None, 0
    for level in levels:
        ok = [a for a in level.answers if a.ok]
        tpot = percentile([a.tpot for a in ok if a.tpot is not None], 50)
        base = base if base is not None else tpot
        if tpot / base <= TPOT_RATIO_TARGET:
            fits = max(fits, level.concurrency)
        ttft = [a.ttft for a in ok if a.ttft is not None]
        rows.append((
            str(level.concurrency), str(len(ok)), f"{sum(a.tokens for a in ok) / level.elapsed:.1f}",
            ms(percentile(ttft, 50)), ms(percentile(ttft, 95)), f"{1000 * tpot:.1f} ms",
            f"{1000 * percentile([a.tpot for a in ok if a.tpot is not None], 95):.1f} ms", f"{tpot / base:.2f}x",
            str(len(level.answers) - len(ok)), f"{level.others_cpu:.2f} cores",
        ))  # fmt: skip
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(len(header))]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths)))
    print(f"\nlargest concurrency measured with TPOT p50 within {TPOT_RATIO_TARGET:.1f}x of the first level's: {fits}")
    if any(level.others_cpu > DISTURBED for level in levels):
        print("note: processes outside the bench used more than 0.2 cores in some level; the figures are disturbed")


# --- the report --------------------------------------------------------------------------------------


def ms(seconds: float | None) -> str:
    return "-" if seconds is None or math.isnan(seconds) else f"{1000 * seconds:.0f} ms"


def busy_share(phase: Phase) -> tuple[float, float]:
    """(share of samples with >= 1 sequence running, mean running), over the samples taken while requests arrive."""
    window = [s for s in phase.samples if s[0] <= phase.arrivals_end and not math.isnan(s[1])]
    if not window:
        return float("nan"), float("nan")
    return sum(1 for s in window if s[1] >= 1) / len(window), sum(s[1] for s in window) / len(window)


def local_streams(answers: list[Answer], at: float, bound: str) -> int:
    """The engine's requests in flight when a request sent at ``at`` was routed, seen from the client.

    The client sees neither the moment of routing nor when the gateway's count of a stream drops, only
    that routing falls within ``SLACK`` after ``at`` and the drop within ``SLACK`` of the stream's last
    content event (sent before it) and of its end (sent just before it). So ``"most"`` counts every
    local stream that may still have been counted then, and ``"least"`` only those that surely were.
    """
    if bound == "most":
        return sum(1 for a in answers if a.local and a.ok and a.sent < at + SLACK and (a.done or 0.0) + SLACK > at)
    return sum(
        1 for a in answers if a.local and a.ok and a.sent < at - SLACK and (a.last_content or 0.0) > at + 2 * SLACK
    )


def check_local_first(answers: list[Answer], max_running: int, max_waiting: int) -> list[str]:
    """What the answers say about the routing itself; each finding is a line of the report."""
    findings = []
    missing = sum(1 for a in answers if a.status == 200 and not a.reason)
    if missing:
        findings.append(f"{missing} answers without {Header.ROUTE_REASON}")
    mismatched = Counter((a.reason, a.provider) for a in answers if a.ok and a.reason and (a.reason in HAS_ROOM) != a.local)
    for (reason, provider), count in sorted(mismatched.items()):
        findings.append(f"{count} answers with reason {reason!r} came from provider {provider!r}")
    early = [a for a in answers if a.ok and not a.local and local_streams(answers, a.sent, "most") < max_running]
    if early:
        findings.append(f"{len(early)} requests overflowed to hosted while the engine surely had fewer than "
                        f"max_running={max_running} in flight; reasons {dict(Counter(a.reason for a in early))}")  # fmt: skip
    capacity = max_running + max_waiting
    over = [a for a in answers if a.ok and a.local and local_streams(answers, a.sent, "least") + 1 > capacity]
    if over:
        peak = max(local_streams(answers, a.sent, "least") + 1 for a in over)
        findings.append(f"{len(over)} requests admitted locally while the engine surely had max_running + max_waiting "
                        f"= {capacity} in flight already (up to {peak} at once)")  # fmt: skip
    return findings


def print_report(phases: dict[str, list[Phase]], single: Level, args: argparse.Namespace) -> None:
    single_tpot = percentile([a.tpot for a in single.answers if a.ok and a.tpot is not None], 50)
    print(f"\nlocal_first bench -- {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, {LOCAL_MODEL}; "
          f"{args.requests} streamed requests per arm and round, {args.arrivals} arrivals at {args.rate:g}/s "
          f"(seed {args.seed}), max_tokens {args.max_tokens}{' (ignore_eos)' if args.ignore_eos else ''}, "
          f"{args.rounds} round(s)")  # fmt: skip
    print(f"fake hosted: first event after {args.hosted_ttft_ms:g} ms, then {args.hosted_tokens} events "
          f"{args.hosted_tpot_ms:g} ms apart; local_first: max_running {','.join(map(str, args.max_running))}, "
          f"max_waiting {args.max_waiting}; "
          f"single-stream local TPOT p50 {1000 * single_tpot:.1f} ms ({len(single.answers)} answers, "
          f"before each round; others' CPU up to {single.others_cpu:.2f} cores)\n")  # fmt: skip
    header = ("arm", "answers", "local share", "TTFT p50", "TTFT p95", "TTFT p95 local", "TTFT p95 hosted",
              "TPOT p50 local", "TPOT p95 local", "duration", "errors", "engine busy", "mean running", "others' CPU")  # fmt: skip
    rows, summary = [], {}
    for arm, runs in phases.items():
        answers = [a for p in runs for a in p.answers]
        ok = [a for a in answers if a.ok]
        ttft = [a.ttft for a in ok if a.ttft is not None]
        local_tpot = [a.tpot for a in ok if a.local and a.tpot is not None]
        busy, mean_running = (sum(v) / len(runs) for v in zip(*(busy_share(p) for p in runs)))
        summary[arm] = (percentile(ttft, 95), percentile(local_tpot, 50), busy)
        rows.append((
            arm, str(len(ok)), f"{sum(a.local for a in ok) / len(ok):.0%}" if ok else "-",
            ms(percentile(ttft, 50)), ms(percentile(ttft, 95)),
            ms(percentile([a.ttft for a in ok if a.local and a.ttft is not None], 95)),
            ms(percentile([a.ttft for a in ok if not a.local and a.ttft is not None], 95)),
            f"{1000 * percentile(local_tpot, 50):.1f} ms" if local_tpot else "-",
            f"{1000 * percentile(local_tpot, 95):.1f} ms" if local_tpot else "-",
            f"{sum(p.elapsed for p in runs):.1f} s", str(len(answers) - len(ok)),
            f"{busy:.0%}" if not math.isnan(busy) else "-", f"{mean_running:.1f}" if not math.isnan(mean_running) else "-",
            f"{sum(p.others_cpu for p in runs) / len(runs):.2f} cores",
        ))  # fmt: skip
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(len(header))]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths)))
    print()
    for arm, runs in phases.items():
        answers = [a for p in runs for a in p.answers]
        reasons = Counter(a.reason or "(none)" for a in answers if a.ok)
        errors = Counter(a.error for a in answers if not a.ok)
        print(f"{arm:>14}: route reasons {dict(reasons)}" + (f"; errors {dict(errors)}" if errors else ""))
    if any(p.others_cpu > DISTURBED for runs in phases.values() for p in runs):
        print("\nnote: processes outside the bench used more than 0.2 cores in some phase; the figures are disturbed")
    hosted_p95 = summary["hosted"][0] if "hosted" in summary else None
    for arm in (arm for arm in phases if is_local_first(arm)):
        p95, tpot, busy = summary[arm]
        print(f"\n{arm} (max_running {max_running_of(arm, args)}, max_waiting {args.max_waiting}):")
        if hosted_p95 is not None:
            ratio = p95 / hosted_p95
            met = "met" if ratio <= TTFT_RATIO_TARGET else "MISSED"
            print(f"  target: TTFT p95 / hosted-only TTFT p95 <= {TTFT_RATIO_TARGET:.2f}: {ms(p95)} / {ms(hosted_p95)} "
                  f"= {ratio:.3f}, {1000 * (p95 - hosted_p95):+.0f} ms ({met})")  # fmt: skip
        met = "met" if busy >= BUSY_TARGET else "MISSED"
        print(f"  target: engine busy (>= 1 sequence running) while requests arrive >= {BUSY_TARGET:.0%}: {busy:.0%} ({met})")
        ratio = tpot / single_tpot
        met = "met" if ratio <= TPOT_RATIO_TARGET else "MISSED"
        print(f"  target: local answers' TPOT p50 / single stream's <= {TPOT_RATIO_TARGET:.1f}x: "
              f"{1000 * tpot:.1f} ms / {1000 * single_tpot:.1f} ms = {ratio:.2f}x ({met})")  # fmt: skip
        findings = check_local_first([a for p in phases[arm] for a in p.answers], max_running_of(arm, args), args.max_waiting)
        print("  routing checks: " + ("; ".join(findings) if findings else "every answer has a route reason that "
                                       "agrees with its provider; no early overflow, no over-admission"))  # fmt: skip


def dump(path: Path, phases: dict[str, list[Phase]]) -> None:
    with path.open("w") as out:
        for arm, runs in phases.items():
            for round_index, phase in enumerate(runs):
                for answer in phase.answers:
                    out.write(json.dumps({"arm": arm, "round": round_index, **vars(answer), "tpot": answer.tpot}) + "\n")


# --- the run -----------------------------------------------------------------------------------------


async def measure(port: int, arms: list[str], args: argparse.Namespace, pids: list[int]) -> tuple[dict[str, list[Phase]], Level]:
    await warm_up(port, arms, args)
    single = Level(1, [], 0.0, 0.0)  # every round's, pooled: the machine drifts by +-20% over minutes
    offsets = arrival_offsets(args.requests, args.rate, args.arrivals, args.seed)
    phases: dict[str, list[Phase]] = {arm: [] for arm in arms}
    for round_index in range(args.rounds):
        order = arms if round_index % 2 == 0 else arms[::-1]
        level = await single_stream(port, args, pids)
        single.answers += level.answers
        single.elapsed += level.elapsed
        single.others_cpu = max(single.others_cpu, level.others_cpu)
        for arm in order:
            for attempt in range(1 + args.retry_disturbed):
                phase = await run_phase(port, arm, offsets, args, pids)
                print(f"  round {round_index + 1} {arm}: {sum(a.ok for a in phase.answers)}/{len(phase.answers)} ok "
                      f"in {phase.elapsed:.1f} s, others' CPU {phase.others_cpu:.2f} cores", file=sys.stderr, flush=True)  # fmt: skip
                if phase.others_cpu <= DISTURBED:
                    break
            phases[arm].append(phase)
    return phases, single


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {','.join(ARMS)}")
    parser.add_argument("--requests", type=int, default=120, help="requests per arm and round (default 120)")
    parser.add_argument("--rate", type=float, default=8.0, help="arrivals per second (default 8: above the ~6/s the engine serves at 64 tokens within 1.5x of "
                             "its single-stream TPOT)")
    parser.add_argument("--arrivals", choices=("poisson", "fixed"), default="poisson")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every arm; the order turns each round")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false",
                        help="let local answers stop at end-of-sequence (default: every one max_tokens long)")
    parser.add_argument("--max-running", default="4",
                        help="local_first.max_running (default 4); several (4,8,12): one local_first arm each, same run")
    parser.add_argument("--max-waiting", type=int, default=0, help="local_first.max_waiting (default 0)")
    parser.add_argument("--max-num-seqs", type=int, default=64, help="the local provider's max_num_seqs (default 64)")
    parser.add_argument("--hosted-ttft-ms", type=float, default=300.0, help="the fake's wait before a stream's first event")
    parser.add_argument("--hosted-tpot-ms", type=float, default=20.0, help="the fake's pause between events")
    parser.add_argument("--hosted-tokens", type=int, default=64, help="content events per fake stream")
    parser.add_argument("--single-streams", type=int, default=4, help="local answers, one at a time, for the reference TPOT")
    parser.add_argument("--request-timeout", type=float, default=180.0, help="seconds a request may take")
    parser.add_argument("--quick", action="store_true", help="a ~25 s smoke run: 24 requests, 32 tokens")
    parser.add_argument("--sweep", metavar="LEVELS", default="",
                        help="instead: the local model alone, closed loop, at each concurrency (e.g. 1,2,3,4,6,8): "
                             "TTFT and TPOT, to choose max_running")  # fmt: skip
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                        help="before each phase, wait up to S seconds for other processes to leave the CPUs idle")
    parser.add_argument("--retry-disturbed", type=int, default=0, metavar="N",
                        help="run a phase again, up to N times, while others used more than 0.2 cores during it")
    parser.add_argument("--log-level", default="warning", help="the gateway's --log-level")
    parser.add_argument("--gateway-src", type=Path, help="run the gateway from this source tree (a scratch copy)")
    parser.add_argument("--workdir", type=Path, help="keep the config and logs here (default: a temp dir)")
    parser.add_argument("--dump", type=Path, help="write every answer here, one JSON object a line, for analysis")
    parser.add_argument("--serve-hosted", action="store_true", help=argparse.SUPPRESS)  # the child's mode
    parser.add_argument("--lifetime", type=float, default=1800.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.max_running = [int(value) for value in args.max_running.split(",")]
    if args.quick:
        args.requests, args.max_tokens, args.single_streams = 24, 32, 2
        args.hosted_tokens = min(args.hosted_tokens, 32)
    if not 1 <= args.requests <= 2000 or not 0 < args.rate <= 100 or not 1 <= args.rounds <= 10:
        parser.error("--requests in [1, 2000], --rate in (0, 100], --rounds in [1, 10]")
    if not 2 <= args.max_tokens <= 1024 or not 1 <= args.hosted_tokens <= 4096:
        parser.error("--max-tokens in [2, 1024], --hosted-tokens in [1, 4096]")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM as Ctrl-C: the finally in main stops the children either way


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_hosted:
        asyncio.run(serve_hosted(0, args.hosted_tokens, args.hosted_ttft_ms / 1000, args.hosted_tpot_ms / 1000, args.lifetime))
        return 0
    names = ["local"] if args.sweep else [arm for arm in args.arms.split(",") if arm]
    if not names or any(arm not in ARMS for arm in names):
        raise SystemExit(f"--arms: expected some of {','.join(ARMS)}")
    arms = expand_arms(names, args)
    signal.signal(signal.SIGTERM, _interrupt)
    with tempfile.TemporaryDirectory(prefix="switchyard-local-first-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        processes = Processes(workdir, chunk_delay_ms=args.hosted_tpot_ms, lifetime=args.lifetime)
        try:
            processes.start_hosted(args)
            port = processes.start_switchyard(args, list(dict.fromkeys(["local", *arms])))
            pids = [child.pid for child in processes._children]
            if args.sweep:
                levels = asyncio.run(sweep(port, args, pids))
            else:
                phases, single = asyncio.run(measure(port, arms, args, pids))
        except KeyboardInterrupt:
            print("interrupted; stopping what the bench started", file=sys.stderr)
            return 130
        finally:
            processes.stop()
    if args.sweep:
        print_sweep(levels, args)
    else:
        print_report(phases, single, args)
        if args.dump is not None:
            dump(args.dump, phases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
