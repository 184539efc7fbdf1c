"""What the gateway adds: the same load sent straight to a fast fake upstream and through Switchyard.

    .venv/bin/python bench/overhead.py              # ~60 s: smoke check, warm-up, 16 interleaved phases
    .venv/bin/python bench/overhead.py --quick      # ~10 s smoke run
    .venv/bin/python bench/overhead.py --profile    # then py-spy on the gateway under load

Three processes share the machine: the fake upstream (``bench/fast_upstream.py``),
the gateway (``switchyard serve``, a subprocess) and this load generator (an
asyncio raw-socket HTTP/1.1 keep-alive client, one connection per concurrent
worker). Each scenario runs against both targets, alternating the order from
round to round (direct, gateway, gateway, direct, ...) so drift hits both alike:

* ``c1``      non-streamed chat completions, one at a time: latency p50/p99.
* ``c64``     non-streamed, 64 connections busy at once: requests/s.
* ``stream``  ``"stream": true``, one at a time: 20 content events + ``[DONE]``,
              time to the first ``data:`` event and to the end of the stream.
* ``stream16`` the same with 16 streams at once: one wake-up of the event loop
              then relays events of several streams, as on a busy gateway.

The gateway's CPU time per request comes from ``/proc/<pid>/task/*/schedstat``
(nanoseconds on the CPU, every thread), cross-checked against ``/proc/<pid>/stat``
utime+stime. It is the figure least disturbed by the load generator sharing
the two cores: waiting for a core makes a request slower, not costlier.

All traffic stays on 127.0.0.1; every phase is bounded in time and count.
Exit status is 0 unless the bench itself could not run (a target that is
missed is reported, not failed).

Experiments: ``--gateway-src DIR`` runs the gateway from another source tree
(a scratch copy), ``--compare-src DIR`` adds a second gateway B from DIR to
the same interleaved run and prints B against A. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
CHUNKS = 20
MODEL = "bench-model"
REQUEST_TIMEOUT = 15.0  # seconds a phase may overrun its duration before its workers are cancelled
MAX_REQUESTS_PER_PHASE = 500_000
STREAM_CONCURRENCY = 16  # the second streaming scenario: many streams at once share the loop's wake-ups

# The targets and, for scale, what LiteLLM (the best-known Python gateway) measures.
TARGETS = {
    "added_p50": 1.0,  # ms added at p50, concurrency 1
    "rps_c64": 800.0,  # requests/s through the gateway at concurrency 64
    "cpu_request": 1.0,  # ms of gateway CPU per non-streamed request
    "cpu_stream": 2.0,  # ms of gateway CPU per 20-chunk stream
}

BODY = (
    b'{"model":"' + MODEL.encode() + b'","messages":[{"role":"system","content":"You are a helpful assistant."},'
    b'{"role":"user","content":"Say hello in one short sentence."}],"temperature":0.7,"max_tokens":64}'
)
STREAM_BODY = BODY[:-1] + b',"stream":true}'


def build_request(port: int, body: bytes) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:%d\r\n"
        b"content-type: application/json\r\naccept: application/json\r\n"
        b"authorization: Bearer sk-bench\r\nuser-agent: switchyard-bench/1\r\n"
        b"content-length: %d\r\n\r\n%s" % (port, len(body), body)
    )


# --------------------------------------------------------------------------- CPU accounting


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(schedstat run time of all threads, utime+stime) of a process, in seconds."""
    run_ns = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                    run_ns += int(f.read().split()[0])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                pass  # a thread that just ended; its time is in /proc/<pid>/stat
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)
    except (FileNotFoundError, ProcessLookupError):
        return 0.0, 0.0
    return run_ns / 1e9, ticks / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    return time.process_time()


# --------------------------------------------------------------------------- the load generator


class ClientConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed mid-response"))

    def request(self, data: bytes, stream: bool) -> asyncio.Future:
        """Send one request; the future gets (ok, total seconds, first-event seconds or None)."""
        assert self.transport is not None
        if self.lost:
            raise ConnectionError("connection closed")
        self.buffer.clear()
        self.stream = stream
        self.head_end = -1
        self.length = -1
        self.chunked = False
        self.status = 0
        self.body = bytearray()
        self.pos = 0
        self.first_event: float | None = None
        self.waiter = asyncio.get_running_loop().create_future()
        self.started = time.perf_counter()
        self.transport.write(data)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        buffer = self.buffer
        buffer += data
        if self.head_end < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).lower()
            self.status = int(head[9:12])
            self.head_end = self.pos = end + 4
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                self.length = int(head[at + 17 : stop if stop >= 0 else None])
            else:
                self.chunked = b"transfer-encoding: chunked" in head
        if not self.chunked:
            if self.length < 0:
                waiter.set_result((False, now - self.started, None))  # neither length nor chunks: unsupported
                return
            if len(buffer) - self.head_end >= self.length:
                if self.stream and b"data:" in buffer:
                    self.first_event = self.first_event or now
                ok = self.status == 200 and (not self.stream or buffer.endswith(b"data: [DONE]\n\n"))
                waiter.set_result((ok, now - self.started, self._since(self.first_event)))
            return
        # Chunked transfer-encoding: decode what has arrived.
        pos = self.pos
        while True:
            line_end = buffer.find(b"\r\n", pos)
            if line_end < 0:
                break
            size = int(buffer[pos:line_end].split(b";", 1)[0], 16)
            if size == 0:
                if len(buffer) < line_end + 4:
                    break  # the final CRLF has not arrived
                body = self.body
                events = body.count(b"data:")
                ok = self.status == 200 and (
                    not self.stream or (events == CHUNKS + 1 and body.endswith(b"data: [DONE]\n\n"))
                )
                waiter.set_result((ok, now - self.started, self._since(self.first_event)))
                return
            start = line_end + 2
            if len(buffer) < start + size + 2:
                break
            payload = buffer[start : start + size]
            if self.first_event is None and b"data:" in payload:
                self.first_event = now
            self.body += payload
            pos = start + size + 2
        self.pos = pos

    def _since(self, moment: float | None) -> float | None:
        return None if moment is None else moment - self.started

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@dataclass
class Scenario:
    name: str
    stream: bool
    concurrency: int
    label: str


@dataclass
class PhaseResult:
    scenario: str
    target: str
    requests: int = 0
    errors: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds
    first_events: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # process -> schedstat seconds
    cpu_ticks: dict[str, float] = field(default_factory=dict)  # process -> utime+stime seconds


async def open_connections(port: int, count: int) -> list[ClientConnection]:
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(count):
        _, protocol = await asyncio.wait_for(loop.create_connection(ClientConnection, HOST, port), 10)
        conns.append(protocol)
    return conns


async def run_phase(
    scenario: Scenario, target: str, port: int, duration: float, pids: dict[str, int], max_requests: int
) -> PhaseResult:
    result = PhaseResult(scenario.name, target)
    data = build_request(port, STREAM_BODY if scenario.stream else BODY)
    conns = await open_connections(port, scenario.concurrency)
    await asyncio.sleep(0.05)  # let the server accept them all before the CPU snapshot
    latencies, first_events = result.latencies, result.first_events
    counter = [0, 0]  # completed, errors

    async def worker(conn: ClientConnection, deadline: float) -> None:
        while time.perf_counter() < deadline and counter[0] < max_requests:
            try:
                ok, total, first = await conn.request(data, scenario.stream)
            except ConnectionError:
                counter[1] += 1
                return
            if not ok:
                counter[1] += 1
                continue
            counter[0] += 1
            latencies.append(total)
            if first is not None:
                first_events.append(first)

    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    before_self = own_cpu()
    started = time.perf_counter()
    tasks = [asyncio.create_task(worker(conn, started + duration)) for conn in conns]
    _, pending = await asyncio.wait(tasks, timeout=duration + REQUEST_TIMEOUT)
    for task in pending:
        task.cancel()
        counter[1] += 1
    if pending:
        await asyncio.wait(pending, timeout=5)
    result.elapsed = time.perf_counter() - started
    after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    result.cpu = {name: after[name][0] - before[name][0] for name in pids}
    result.cpu_ticks = {name: after[name][1] - before[name][1] for name in pids}
    result.cpu["loadgen"] = own_cpu() - before_self
    result.requests, result.errors = counter
    for conn in conns:
        conn.close()
    await asyncio.sleep(0.02)
    return result


# --------------------------------------------------------------------------- processes


class Processes:
    """The fake upstream and the gateway(s), each in its own process; stopped on exit."""

    def __init__(self, workdir: Path, chunk_delay_ms: float, lifetime: float) -> None:
        self.workdir = workdir
        self.chunk_delay_ms = chunk_delay_ms
        self.lifetime = lifetime
        self.children: list[subprocess.Popen] = []
        self.upstream_port = 0
        self.upstream: subprocess.Popen | None = None
        self.gateways: dict[str, tuple[subprocess.Popen, int]] = {}  # target name -> (process, port)
        self.logs: list = []

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        return env

    def start_upstream(self) -> None:
        log = open(self.workdir / "upstream.log", "wb")
        self.logs.append(log)
        self.upstream = subprocess.Popen(
            [sys.executable, str(HERE / "fast_upstream.py"), "--host", HOST, "--port", "0",
             "--chunks", str(CHUNKS), "--chunk-delay-ms", str(self.chunk_delay_ms),
             "--lifetime", str(self.lifetime)],
            stdout=subprocess.PIPE, stderr=log, env=self.env(),
        )
        self.children.append(self.upstream)
        assert self.upstream.stdout is not None
        line = _read_line(self.upstream.stdout, timeout=15)
        if not line.startswith("listening on "):
            raise RuntimeError(f"fake upstream did not start: {line!r}; see {self.workdir / 'upstream.log'}")
        self.upstream_port = int(line.split()[-1])

    def start_gateway(self, name: str, log_level: str, src: Path | None = None) -> None:
        """``switchyard serve`` in front of the fake upstream; ``src``: run another source tree instead."""
        port = _free_port()
        config = self.workdir / f"{name}-config.yaml"
        config.write_text(
            f"server: {{host: {HOST}, port: {port}, log_level: {log_level}}}\n"
            "providers:\n"
            f"  fake: {{type: custom, base_url: 'http://{HOST}:{self.upstream_port}/v1'}}\n"
            "models:\n"
            f"  {MODEL}:\n"
            "    deployments:\n"
            "      - {provider: fake, model: fake-model}\n"
        )
        switchyard = Path(sys.executable).parent / "switchyard"
        env = self.env()
        if src is not None:
            # An experiment's scratch copy shadows the installed package.
            command = [sys.executable, "-m", "gateway"]
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
        else:
            command = [str(switchyard)] if switchyard.exists() else [sys.executable, "-m", "gateway"]
        log_path = self.workdir / f"{name}.log"
        log = open(log_path, "wb")
        self.logs.append(log)
        process = subprocess.Popen(
            [*command, "serve", "--config", str(config), "--host", HOST, "--port", str(port),
             "--log-level", log_level],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=src or None,
        )
        self.children.append(process)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if _http_get_ok(port, "/health"):
                self.gateways[name] = (process, port)
                return
            time.sleep(0.1)
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{name} did not answer GET /health within 60 s:\n{tail}")

    def stop(self) -> None:
        for child in reversed(self.children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in reversed(self.children):
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=5)
        for log in self.logs:
            log.close()


def _read_line(stream, timeout: float) -> str:
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    return stream.readline().decode(errors="replace").strip()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _http_get_ok(port: int, path: str) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nhost: {HOST}\r\nconnection: close\r\n\r\n".encode())
            sock.settimeout(2)
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


# --------------------------------------------------------------------------- smoke check


def smoke(processes: Processes) -> None:
    """httpx and the openai SDK against both targets, once: proves the framing, fails loudly."""
    import httpx
    import openai

    targets = [("direct", processes.upstream_port)] + [(n, p) for n, (_, p) in processes.gateways.items()]
    for name, port in targets:
        base = f"http://{HOST}:{port}/v1"
        with httpx.Client(timeout=10, trust_env=False) as client:
            answer = client.post(f"{base}/chat/completions", content=BODY,
                                 headers={"content-type": "application/json"})
            assert answer.status_code == 200, (name, answer.status_code, answer.text)
            assert answer.json()["object"] == "chat.completion", (name, answer.text)
            with client.stream("POST", f"{base}/chat/completions", content=STREAM_BODY,
                               headers={"content-type": "application/json"}) as streamed:
                assert streamed.headers["content-type"].startswith("text/event-stream"), streamed.headers
                events = [line for line in streamed.iter_lines() if line.startswith("data:")]
            assert len(events) == CHUNKS + 1 and events[-1] == "data: [DONE]", (name, events[-3:])
        sdk = openai.OpenAI(base_url=base, api_key="sk-bench", max_retries=0, timeout=10,
                            http_client=httpx.Client(trust_env=False))
        reply = sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content, (name, reply)
        deltas = [c.choices[0].delta.content for c in sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True)]
        assert len(deltas) == CHUNKS and all(deltas), (name, deltas)
        sdk.close()


async def raw_smoke(processes: Processes) -> None:
    for port in [processes.upstream_port] + [p for _, p in processes.gateways.values()]:
        (conn,) = await open_connections(port, 1)
        for stream in (False, True, False):
            ok, _, first = await asyncio.wait_for(
                conn.request(build_request(port, STREAM_BODY if stream else BODY), stream), 10)
            assert ok and (first is not None) == stream, (port, stream, ok, first)
        conn.close()


# --------------------------------------------------------------------------- report


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


@dataclass
class Totals:
    requests: int = 0
    errors: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    first_events: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    cpu_ticks: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, phase: PhaseResult) -> None:
        self.requests += phase.requests
        self.errors += phase.errors
        self.elapsed += phase.elapsed
        self.latencies += phase.latencies
        self.first_events += phase.first_events
        for name, value in phase.cpu.items():
            self.cpu[name] += value
        for name, value in phase.cpu_ticks.items():
            self.cpu_ticks[name] += value

    def cpu_ms(self, process: str) -> float:
        return 1000 * self.cpu[process] / self.requests if self.requests else float("nan")

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed if self.elapsed else float("nan")


def fmt(value: float, digits: int = 2) -> str:
    if value != value:  # nan
        return "-"
    return f"{value:,.{digits}f}"


def report(totals: dict[tuple[str, str], Totals]) -> tuple[str, list[str]]:
    def t(scenario: str, target: str) -> Totals:
        return totals.get((scenario, target), Totals())

    rows: list[tuple[str, str, str, str, str, str, str]] = []
    misses: list[str] = []

    def mark(passed: bool | None, what: str) -> str:
        if passed is None:
            return ""
        if not passed:
            misses.append(what)
        return "ok" if passed else "MISS"

    c1d, c1g = t("c1", "direct"), t("c1", "gateway")
    for q in (50, 99):
        d, g = 1000 * percentile(c1d.latencies, q), 1000 * percentile(c1g.latencies, q)
        added = g - d
        target = f"< +{TARGETS['added_p50']:g} ms" if q == 50 else ""
        passed = added < TARGETS["added_p50"] if q == 50 else None
        rows.append((f"latency p{q}, c=1 (ms)", fmt(d, 3), fmt(g, 3), f"+{fmt(added, 3)} ({fmt(g / d, 1)}x)",
                     target, "+13-18 ms" if q == 50 else "", mark(passed, f"added p{q} latency")))
    c64d, c64g = t("c64", "direct"), t("c64", "gateway")
    rows.append(("throughput, c=64 (req/s)", fmt(c64d.rps, 0), fmt(c64g.rps, 0), f"{fmt(c64g.rps / c64d.rps)}x",
                 f">= {TARGETS['rps_c64']:g}", "60-80", mark(c64g.rps >= TARGETS["rps_c64"], "req/s at c=64")))
    for q in (50, 99):
        d, g = 1000 * percentile(c64d.latencies, q), 1000 * percentile(c64g.latencies, q)
        rows.append((f"latency p{q}, c=64 (ms)", fmt(d), fmt(g), f"+{fmt(g - d)} ({fmt(g / d, 1)}x)", "", "", ""))
    sd, sg = t("stream", "direct"), t("stream", "gateway")
    for q in (50, 99):
        d, g = 1000 * percentile(sd.first_events, q), 1000 * percentile(sg.first_events, q)
        rows.append((f"stream first event p{q}, c=1 (ms)", fmt(d, 3), fmt(g, 3),
                     f"+{fmt(g - d, 3)} ({fmt(g / d, 1)}x)", "", "", ""))
    d, g = 1000 * percentile(sd.latencies, 50), 1000 * percentile(sg.latencies, 50)
    rows.append((f"stream total p50, c=1 (ms)", fmt(d), fmt(g), f"+{fmt(g - d)} ({fmt(g / d, 2)}x)",
                 "", "", ""))
    s16d, s16g = t("stream16", "direct"), t("stream16", "gateway")
    d, g = 1000 * percentile(s16d.first_events, 50), 1000 * percentile(s16g.first_events, 50)
    rows.append((f"stream first event p50, c={STREAM_CONCURRENCY} (ms)", fmt(d, 3), fmt(g, 3),
                 f"+{fmt(g - d, 3)} ({fmt(g / d, 1)}x)", "", "", ""))
    for name, totals_g, target_key, ref in (
        ("gateway CPU / request, c=1 (ms)", c1g, "cpu_request", "12-18 ms"),
        ("gateway CPU / request, c=64 (ms)", c64g, "cpu_request", "12-18 ms"),
        (f"gateway CPU / {CHUNKS}-chunk stream, c=1 (ms)", sg, "cpu_stream", "30-45 ms"),
        (f"gateway CPU / {CHUNKS}-chunk stream, c={STREAM_CONCURRENCY} (ms)", s16g, "cpu_stream", "30-45 ms"),
    ):
        value = totals_g.cpu_ms("gateway")
        rows.append((name, "-", fmt(value, 3), "", f"<= {TARGETS[target_key]:g} ms", ref,
                     mark(value <= TARGETS[target_key], name)))
    for process, label in (("upstream", "fake upstream"), ("loadgen", "load generator")):
        for scenario, name in (("c64", "request, c=64"), ("stream", "stream, c=1")):
            d, g = t(scenario, "direct").cpu_ms(process), t(scenario, "gateway").cpu_ms(process)
            rows.append((f"{label} CPU / {name} (ms)", fmt(d, 3), fmt(g, 3), "", "", "", ""))
    errors = sum(x.errors for x in totals.values())
    rows.append(("errors (all phases)", str(sum(totals[k].errors for k in totals if k[1] == "direct")),
                 str(sum(totals[k].errors for k in totals if k[1] == "gateway")), "", "0", "",
                 mark(errors == 0, "errors")))

    header = ("metric", "direct", "via gateway", "added / ratio", "target", "LiteLLM", "")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, None, *rows]:
        if row is None:
            lines.append("  ".join("-" * w for w in widths))
            continue
        cells = [str(row[0]).ljust(widths[0])] + [str(c).rjust(w) for c, w in zip(row[1:-1], widths[1:-1])]
        cells.append(str(row[-1]))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines), misses


def compare_report(totals: dict[tuple[str, str], Totals]) -> str:
    """The main gateway (A) against --compare-src (B), measured in the same interleaved run."""
    rows = [("metric", "gateway (A)", "B", "B vs A")]

    def add(name: str, a: float, b: float, digits: int = 3) -> None:
        rows.append((name, fmt(a, digits), fmt(b, digits), f"{100 * (b - a) / a:+.1f}%" if a == a and a else "-"))

    A, B = "gateway", "B"
    for scenario, label in (("c1", "request, c=1"), ("c64", "request, c=64"), ("stream", "stream, c=1"),
                            ("stream16", f"stream, c={STREAM_CONCURRENCY}")):
        add(f"gateway CPU / {label} (ms)", totals[(scenario, A)].cpu_ms("gateway"),
            totals[(scenario, B)].cpu_ms("gateway"))
    add("latency p50, c=1 (ms)", 1000 * percentile(totals[("c1", A)].latencies, 50),
        1000 * percentile(totals[("c1", B)].latencies, 50))
    add("throughput, c=64 (req/s)", totals[("c64", A)].rps, totals[("c64", B)].rps, 0)
    add("stream first event p50 (ms)", 1000 * percentile(totals[("stream", A)].first_events, 50),
        1000 * percentile(totals[("stream", B)].first_events, 50))
    rows.append(("errors", str(sum(t.errors for k, t in totals.items() if k[1] == A)),
                 str(sum(t.errors for k, t in totals.items() if k[1] == B)), ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --------------------------------------------------------------------------- profiling


CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    # C frames, seen only with --native
    ("syscalls via libc (socket write/read, epoll, poll, getpid)", ("libc.so", "libpthread")),
    ("CPython runtime (GC, allocation, ...)", ("libpython",)),
    ("uvicorn + httptools (server-side HTTP parse/write)", ("uvicorn/", "httptools/")),
    ("Starlette/FastAPI (routing, Request, Response, middleware stack)", ("starlette/", "fastapi/")),
    ("our ASGI middleware (request id, disconnect watch)", ("gateway/request_id.py", "gateway/disconnect.py")),
    ("request validation (pydantic + parse_body)", ("pydantic/", "pydantic_core/", "gateway/validation.py")),
    ("relay + router (gateway/api.py, router.py)", ("gateway/api.py", "gateway/router.py")),
    ("SSE relay (gateway/streaming.py, providers/sse.py)", ("gateway/streaming.py", "providers/sse.py")),
    ("provider adapter (providers/openai_compatible.py)", ("providers/",)),
    ("aiohttp client (+ yarl, multidict)", ("aiohttp/", "yarl/", "multidict/", "propcache/", "aiosignal/",
                                            "frozenlist/", "aiohappyeyeballs/")),
    ("httpx client (build_request, send, Response)", ("httpx/",)),
    ("httpcore (connection pool, HTTP/1.1 connection)", ("httpcore/",)),
    ("h11 (httpcore's HTTP/1.1 parser)", ("h11/",)),
    ("anyio (httpcore's network backend)", ("anyio/", "sniffio/")),
    ("logging", ("logging/",)),
    ("orjson", ("orjson",)),
    ("asyncio / uvloop event loop", ("asyncio/", "uvloop", "loop.c", "contextvars", "selectors.py", "socket.py")),
    ("enum / typing / dataclasses / other stdlib", ("enum.py", "typing.py", "dataclasses.py", "abc.py",
                                                    "functools.py", "contextlib.py", "re/", "uuid.py")),
]


# Frames every sample passes through; left out of the "total time" table.
ROOT_FILES = ("switchyard", "gateway/cli.py", "gateway/__main__.py", "uvicorn/main.py", "uvicorn/server.py",
              "uvicorn/_compat.py", "asyncio/runners.py", "asyncio/base_events.py", "asyncio/events.py",
              "runpy.py", "<frozen runpy>")

# Where the time of one request goes, step by step (function name, file), inclusive of callees.
KEY_FUNCTIONS: list[tuple[str, str, str]] = [
    ("server: HTTP parsing (httptools callbacks)", "HttpToolsProtocol.data_received", "uvicorn/"),
    ("server: whole ASGI app for one request", "RequestResponseCycle.run_asgi", "uvicorn/"),
    ("server: uvicorn writes the response", "RequestResponseCycle.send", "uvicorn/"),
    ("RequestIdMiddleware (incl. everything inside)", "RequestIdMiddleware.__call__", "gateway/request_id.py"),
    ("CancelOnDisconnectMiddleware (incl. inside)", "CancelOnDisconnectMiddleware.__call__", "gateway/disconnect"),
    ("Starlette Request.body()", "Request.body", "starlette/"),
    ("our relay() handler (incl. upstream call)", "api_routes.<locals>.relay", "gateway/api.py"),
    ("parse_body: orjson.loads + pydantic", "parse_body", "gateway/validation.py"),
    ("  of which pydantic model_validate", "BaseModel.model_validate", "pydantic/"),
    ("router._first_answer (incl. upstream call)", "Router._first_answer", "gateway/router.py"),
    ("provider: build request (orjson.dumps + httpx)", "OpenAICompatibleProvider._build", "providers/"),
    ("aiohttp ClientSession._request (send + response head)", "ClientSession._request", "aiohttp/"),
    ("  aiohttp ClientRequest.send (write the request)", "ClientRequest.send", "aiohttp/"),
    ("  aiohttp connector: take/return a pooled connection", "BaseConnector.connect", "aiohttp/"),
    ("aiohttp ClientResponse.read (non-stream body)", "ClientResponse.read", "aiohttp/"),
    ("aiohttp ResponseHandler.data_received (parse upstream bytes)", "ResponseHandler.data_received", "aiohttp/"),
    ("aiohttp per-read timeout timer (sock_read)", "ResponseHandler._reschedule_timeout", "aiohttp/"),
    ("aiohttp StreamReader.readany (await next chunk)", "StreamReader.readany", "aiohttp/"),
    ("httpx AsyncClient.send (whole upstream exchange)", "AsyncClient.send", "httpx/"),
    ("  httpcore pool handle_async_request", "AsyncConnectionPool.handle_async_request", "httpcore/"),
    ("  httpcore pool _assign_requests_to_connections", "AsyncConnectionPool._assign_requests_to_connections",
     "httpcore/"),
    ("  httpcore has_expired (poll() per idle conn)", "AsyncHTTP11Connection.has_expired", "httpcore/"),
    ("  httpcore HTTP/1.1 send request", "AsyncHTTP11Connection._send_request_headers", "httpcore/"),
    ("  httpcore HTTP/1.1 receive response headers", "AsyncHTTP11Connection._receive_response_headers",
     "httpcore/"),
    ("  httpcore response body + close", "AsyncHTTP11Connection._receive_response_body", "httpcore/"),
    ("httpx Response.aread (non-stream body)", "Response.aread", "httpx/"),
    ("httpx Response.aclose / pool release", "Response.aclose", "httpx/"),
    ("SSE: EventStreamResponse.__call__ (relay loop)", "EventStreamResponse.__call__", "gateway/streaming.py"),
    ("SSE: EventStream.__aiter__ (read + decode)", "EventStream.__aiter__", "providers/openai_compatible.py"),
    ("SSE: SSEDecoder.feed", "SSEDecoder.feed", "providers/sse.py"),
    ("FastAPI native telemetry check (OpenTelemetry providers)", "NativeTelemetry.enabled", "fastapi/"),
    ("request id: uuid4()", "uuid4", "uuid.py"),
    ("logging (any logger call)", "Logger.", "logging/"),
    ("starlette Response.__call__ / init (non-stream)", "Response.__call__", "starlette/responses.py"),
]


def _frame_file(frame: str) -> str:
    at = frame.rfind(" (")
    return frame[at + 2 : -1] if at >= 0 and frame.endswith(")") else frame


def categorise(frame: str) -> str:
    location = _frame_file(frame)
    for name, markers in CATEGORIES:
        if any(marker in location for marker in markers):
            return name
    return "other"


def _function(frame: str) -> str:
    """``f (file.py:12)`` -> ``f (file.py)``: line-level samples summed per function."""
    at = frame.rfind(":")
    return frame[:at] + ")" if at > frame.rfind(" (") and frame[at + 1 : -1].isdigit() else frame


def read_collapsed(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        frames_text, _, count = line.rpartition(" ")
        if not frames_text or not count.isdigit():
            continue
        frames = [f for f in frames_text.split(";") if not f.startswith(("process ", "thread "))]
        if frames:
            stacks.append((frames, int(count)))
    return stacks


def summarise_profile(path: Path, cpu_per_request_ms: float, unit: str, top: int,
                      source: str = "in this phase") -> str:
    stacks = read_collapsed(path)
    total = sum(count for _, count in stacks)
    if not total:
        return f"(no samples in {path})"
    own: dict[str, int] = defaultdict(int)
    own_lines: dict[str, int] = defaultdict(int)  # our own code, line by line
    inclusive: dict[str, int] = defaultdict(int)
    by_category: dict[str, int] = defaultdict(int)
    for frames, count in stacks:
        leaf = frames[-1]
        own[_function(leaf)] += count
        by_category[categorise(leaf)] += count
        if _frame_file(leaf).startswith(("gateway/", "providers/")):
            own_lines[leaf] += count
        for frame in {_function(f) for f in frames}:
            inclusive[frame] += count

    def us(samples: int) -> str:
        return f"{1000 * cpu_per_request_ms * samples / total:8.1f}"

    lines = [f"{total} samples; {cpu_per_request_ms:.3f} ms gateway CPU per {unit} {source}; "
             f"µs = share of samples x that", "",
             f"where the CPU goes, by the code running at the sample (own time):",
             f"  {'share':>6}  {'µs/' + unit:>10}  category"]
    for name, samples in sorted(by_category.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {100 * samples / total:5.1f}%  {us(samples):>10}  {name}")
    lines += ["", f"top {top} functions by own time:", f"  {'own':>6}  {'µs/' + unit:>10}  function (file)"]
    for frame, samples in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * samples / total:5.1f}%  {us(samples):>10}  {frame}")
    lines += ["", "our own code (gateway/, providers/) by line, own time (C calls such as orjson or "
              "pydantic-core's validator count for the line that makes them):",
              f"  {'own':>6}  {'µs/' + unit:>10}  function (file:line)"]
    for frame, samples in sorted(own_lines.items(), key=lambda kv: -kv[1])[:12]:
        lines.append(f"  {100 * samples / total:5.1f}%  {us(samples):>10}  {frame}")
    lines += ["", f"top {top} functions by total time (own + callees):",
              f"  {'total':>6}  {'µs/' + unit:>10}  function (file)"]
    ranked = [kv for kv in sorted(inclusive.items(), key=lambda kv: -kv[1])
              if not _frame_file(kv[0]).startswith(ROOT_FILES)]
    for frame, samples in ranked[:top]:
        lines.append(f"  {100 * samples / total:5.1f}%  {us(samples):>10}  {frame}")
    lines += ["", "key steps, total time (own + callees; lower bounds with --profile-nonblocking):",
              f"  {'total':>6}  {'µs/' + unit:>10}  step"]
    for label, name, where in KEY_FUNCTIONS:
        samples = sum(count for frames, count in stacks
                      if any(f.startswith(name) and where in _frame_file(f) for f in frames))
        if samples:
            lines.append(f"  {100 * samples / total:5.1f}%  {us(samples):>10}  {label}")
    return "\n".join(lines)


async def profile_phase(
    scenario: Scenario, port: int, duration: float, pids: dict[str, int], out: Path, native: bool, rate: int,
    blocking: bool = False,
) -> PhaseResult | None:
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        print("py-spy not found; pip install py-spy into the venv", file=sys.stderr)
        return None
    command = [py_spy, "record", "--pid", str(pids["gateway"]), "--format", "raw", "--output", str(out),
               "--rate", str(rate), "--duration", str(int(duration + 2))]
    # Pausing the process at each sample (py-spy's default) gives whole, consistent stacks but slows
    # the gateway; --nonblocking barely disturbs it, but many stacks come out cut at an await.
    # --native needs the pause.
    if native:
        command.append("--native")
    elif not blocking:
        command.append("--nonblocking")
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    await asyncio.sleep(1.0)  # attach
    if spy.poll() is not None:
        print(f"py-spy failed: {spy.stderr.read().decode(errors='replace') if spy.stderr else ''}",
              file=sys.stderr)
        return None
    result = await run_phase(scenario, "gateway", port, duration, pids, MAX_REQUESTS_PER_PHASE)
    try:
        await asyncio.get_running_loop().run_in_executor(None, lambda: spy.wait(timeout=duration + 30))
    except subprocess.TimeoutExpired:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=10)
    return result


# --------------------------------------------------------------------------- main


async def bench(args: argparse.Namespace, processes: Processes) -> int:
    await raw_smoke(processes)
    assert processes.upstream is not None
    targets = ["direct", *processes.gateways]
    ports = {"direct": processes.upstream_port, **{n: port for n, (_, port) in processes.gateways.items()}}
    # For each target, the processes whose CPU is read; "gateway" is the one the target goes through
    # (for direct phases, the idle main gateway: a sanity check that it stays at ~0).
    gateway_pids = {n: proc.pid for n, (proc, _) in processes.gateways.items()}
    pids_for = {t: {"gateway": gateway_pids.get(t, gateway_pids["gateway"]), "upstream": processes.upstream.pid}
                for t in targets}
    scenarios = [
        Scenario("c1", False, 1, "non-streamed, concurrency 1"),
        Scenario("c64", False, args.concurrency, f"non-streamed, concurrency {args.concurrency}"),
        Scenario("stream", True, 1, f"{CHUNKS}-chunk streams, concurrency 1"),
        Scenario("stream16", True, STREAM_CONCURRENCY, f"{CHUNKS}-chunk streams, concurrency {STREAM_CONCURRENCY}"),
    ]

    log = sys.stderr
    print(f"warm-up: {args.warmup:g} s per scenario and target", file=log)
    for scenario in scenarios:
        for target in targets:
            await run_phase(scenario, target, ports[target], args.warmup, pids_for[target], MAX_REQUESTS_PER_PHASE)

    totals: dict[tuple[str, str], Totals] = defaultdict(Totals)
    for round_no in range(0 if args.profile_only else args.rounds):
        # direct, gateway[, B] then the reverse: drift over the run hits every target alike
        order = targets if round_no % 2 == 0 else targets[::-1]
        for scenario in scenarios:
            for target in order:
                phase = await run_phase(scenario, target, ports[target], args.duration, pids_for[target],
                                        MAX_REQUESTS_PER_PHASE)
                totals[(scenario.name, target)].add(phase)
                cpu_ms = 1000 * phase.cpu["gateway"] / phase.requests if phase.requests else float("nan")
                print(f"round {round_no + 1} {scenario.name:6} {target:9}: {phase.requests:6} ok "
                      f"{phase.errors:3} err  {phase.requests / phase.elapsed:8.0f}/s  "
                      f"p50 {1000 * percentile(phase.latencies, 50):7.3f} ms  "
                      f"gateway cpu {cpu_ms:6.3f} ms/req", file=log)

    if args.profile_only:
        return await profile(args, pids_for["gateway"], ports)
    table, misses = report(totals)
    print()
    print(f"Switchyard overhead bench -- {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores "
          f"({_cpu_model()}), Python {platform.python_version()}, {args.rounds} rounds x {args.duration:g} s "
          f"per phase, fake upstream {CHUNKS}-chunk streams with {args.chunk_delay_ms:g} ms between events")
    print(f"gateway: {describe_source(args.gateway_src)}")
    if args.compare_src:
        print(f"B:       {describe_source(args.compare_src)}")
    print()
    print(table)
    print()
    gateway_ticks = {k: v.cpu_ticks.get("gateway", 0.0) for k, v in totals.items() if k[1] == "gateway"}
    gateway_sched = {k: v.cpu.get("gateway", 0.0) for k, v in totals.items() if k[1] == "gateway"}
    print("gateway CPU cross-check, schedstat vs utime+stime (s): " + ", ".join(
        f"{k[0]} {gateway_sched[k]:.2f} vs {gateway_ticks[k]:.2f}" for k in sorted(gateway_sched)))
    idle = sum(v.cpu.get("gateway", 0.0) for k, v in totals.items() if k[1] == "direct")
    print(f"gateway CPU while idle (during the direct phases): {idle * 1000:.1f} ms in total")
    print("targets missed: " + (", ".join(misses) if misses else "none"))
    if args.compare_src:
        print()
        print(compare_report(totals))
    if args.profile:
        reference = {(s.name, s.concurrency): totals[(s.name, "gateway")].cpu_ms("gateway") for s in scenarios}
        await profile(args, pids_for["gateway"], ports, reference)
    return 0


async def profile(args: argparse.Namespace, pids: dict[str, int], ports: dict[str, int],
                  reference: dict[tuple[str, int], float] | None = None) -> int:
    """py-spy on the gateway during extra phases through it; prints where its CPU time goes.

    Shares of samples are turned into µs with the gateway's CPU per request from the measured
    (unprofiled) phases of the same scenario when there are some: py-spy's pauses cost the
    gateway CPU of their own. Otherwise with the profiled phase's own figure.
    """
    out_dir = Path(args.profile_dir or tempfile.mkdtemp(prefix="switchyard-profile-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    profiled = [
        (Scenario("c64", False, args.concurrency, ""), "request"),
        (Scenario("c1", False, 1, ""), "request"),
        (Scenario("stream", True, args.profile_stream_concurrency, ""), "stream"),
    ]
    for scenario, unit in profiled:
        path = out_dir / f"gateway-{scenario.name}.txt"
        # A stream at concurrency 1 keeps the gateway busy a tenth of the time: sample it for longer.
        duration = args.profile_duration * (2 if scenario.stream else 1)
        phase = await profile_phase(scenario, ports["gateway"], duration, pids, path,
                                    args.native, args.profile_rate, not args.profile_nonblocking)
        if phase is None or not path.exists():
            continue
        cpu_ms = 1000 * phase.cpu["gateway"] / max(1, phase.requests)
        source = "in the profiled phase"
        measured = (reference or {}).get((scenario.name, scenario.concurrency))
        if measured is not None and measured == measured:
            cpu_ms, source = measured, f"measured without the profiler ({cpu_ms:.3f} with it)"
        print()
        print(f"== py-spy profile of the gateway: {scenario.name}, concurrency {scenario.concurrency}, "
              f"{duration:g} s, {phase.requests} {unit}s, {phase.requests / phase.elapsed:.0f}/s "
              f"(raw stacks: {path})")
        print(summarise_profile(path, cpu_ms, unit, args.top, source))
    return 0


def describe_source(src: Path | None) -> str:
    """Which code the gateway ran: the source tree and its git state."""
    tree = src or HERE.parent
    where = f"{tree}" if src else f"installed package ({tree})"
    try:
        head = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %s"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--", "gateway", "providers"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return where
    if not head:
        return where
    return f"{where} at {head[:70]}" + (" + uncommitted changes in gateway/ or providers/" if dirty else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Gateway overhead: direct vs via Switchyard, interleaved.")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measured phase (default 3)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per scenario (default 2)")
    parser.add_argument("--warmup", type=float, default=0.4, help="seconds of warm-up per scenario and target")
    parser.add_argument("--concurrency", type=int, default=64, help="connections in the throughput scenario")
    parser.add_argument("--chunk-delay-ms", type=float, default=1.0,
                        help="fake upstream's pause between stream events (0: the whole stream in one write)")
    parser.add_argument("--quick", action="store_true", help="a ~10 s smoke run (1 round, 0.6 s phases)")
    parser.add_argument("--no-smoke", action="store_true", help="skip the httpx/openai SDK framing check")
    parser.add_argument("--profile", action="store_true", help="then run py-spy on the gateway under load")
    parser.add_argument("--profile-only", action="store_true", help="warm up, then profile; no measured phases")
    parser.add_argument("--profile-duration", type=float, default=6.0, help="seconds per profiled phase")
    parser.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second (default 200)")
    parser.add_argument("--profile-stream-concurrency", type=int, default=1,
                        help="concurrent streams while profiling (default 1, as measured)")
    parser.add_argument("--profile-dir", help="where to keep py-spy's raw stacks (default: a new temp dir)")
    parser.add_argument("--profile-nonblocking", action="store_true",
                        help="py-spy --nonblocking: disturbs the gateway less, but many stacks come out cut "
                             "at an await, so totals (own + callees) are undercounted")
    parser.add_argument("--native", action="store_true", help="py-spy --native: C frames too (orjson, ...)")
    parser.add_argument("--top", type=int, default=20, help="functions listed per profile table")
    parser.add_argument("--log-level", default="warning", help="the gateway's --log-level")
    parser.add_argument("--gateway-src", type=Path,
                        help="run the gateway from this source tree (a scratch copy for an experiment) "
                             "instead of the installed package")
    parser.add_argument("--compare-src", type=Path,
                        help="also run a second gateway (B) from this source tree, interleaved with the first, "
                             "and print B against A")
    args = parser.parse_args(argv)
    args.profile = args.profile or args.profile_only
    if args.quick:
        args.duration, args.rounds, args.warmup = 0.5, 1, 0.15
        args.profile_duration = min(args.profile_duration, 2.0)
    if not (0 < args.duration <= 600 and 1 <= args.rounds <= 20 and 0 <= args.warmup <= 60):
        parser.error("--duration must be in (0, 600], --rounds in [1, 20], --warmup in [0, 60]")
    for src in (args.gateway_src, args.compare_src):
        if src is not None and not (src / "gateway" / "__main__.py").is_file():
            parser.error(f"{src} has no gateway/__main__.py: not a source tree of Switchyard")
    if not 1 <= args.concurrency <= 1024:
        parser.error("--concurrency must be in [1, 1024]")

    planned = (12 if args.compare_src else 8) * (args.warmup + args.rounds * args.duration) + (
        4 * args.profile_duration + 12 if args.profile else 0)
    lifetime = 3 * planned + 300  # the fake upstream exits by itself after this, even if orphaned
    print(f"planned: ~{planned + 8:.0f} s", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="switchyard-bench-") as tmp:
        processes = Processes(Path(tmp), args.chunk_delay_ms, lifetime)
        try:
            processes.start_upstream()
            processes.start_gateway("gateway", args.log_level, args.gateway_src)
            if args.compare_src:
                processes.start_gateway("B", args.log_level, args.compare_src)
            if not args.no_smoke:
                smoke(processes)
                print("smoke: httpx and the openai SDK read both targets' JSON and event streams", file=sys.stderr)
            runner = asyncio.run
            try:
                import uvloop

                runner = uvloop.run
            except ImportError:
                pass
            return runner(bench(args, processes))
        except (RuntimeError, AssertionError, OSError) as exc:
            print(f"bench failed: {exc!r}", file=sys.stderr)
            return 1
        finally:
            processes.stop()


if __name__ == "__main__":
    sys.exit(main())
