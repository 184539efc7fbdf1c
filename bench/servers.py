"""The processes under test: the fake upstream and one or two gateways in front of it.

Each runs in its own process, on 127.0.0.1, and is stopped when the bench
ends. The fake upstream also exits by itself after ``lifetime`` seconds, so
a bench that is killed leaves nothing running for long.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from loadgen import open_connections
from workload import BODY, CHUNKS, HOST, MODEL, STREAM_BODY, chat_request

HERE = Path(__file__).resolve().parent


class Servers:
    """The fake upstream and the gateway(s), each in its own process; ``stop`` ends them all."""

    def __init__(self, workdir: Path, chunk_delay_ms: float, lifetime: float) -> None:
        self.workdir = workdir
        self.chunk_delay_ms = chunk_delay_ms
        self.lifetime = lifetime
        self.upstream_port = 0
        self.upstream: subprocess.Popen[bytes] | None = None
        self.gateways: dict[str, tuple[subprocess.Popen[bytes], int]] = {}  # target name -> (process, port)
        self._children: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []

    @property
    def ports(self) -> dict[str, int]:
        """Target name -> port: ``"direct"`` is the fake upstream itself."""
        return {"direct": self.upstream_port, **{name: port for name, (_, port) in self.gateways.items()}}

    def start_upstream(self) -> None:
        log = self._log("upstream.log")
        self.upstream = subprocess.Popen(
            [sys.executable, str(HERE / "fast_upstream.py"), "--host", HOST, "--port", "0",
             "--chunks", str(CHUNKS), "--chunk-delay-ms", str(self.chunk_delay_ms),
             "--lifetime", str(self.lifetime)],
            stdout=subprocess.PIPE, stderr=log, env=_environment(),
        )
        self._children.append(self.upstream)
        assert self.upstream.stdout is not None
        line = _read_line(self.upstream.stdout, timeout=15)
        if not line.startswith("listening on "):
            raise RuntimeError(f"fake upstream did not start: {line!r}; see {self.workdir / 'upstream.log'}")
        self.upstream_port = int(line.split()[-1])

    def start_otlp_sink(self) -> str:
        """A stand-in collector (``otlp_sink.py``) in its own process; its URL, for ``server.otel.endpoint``."""
        log = self._log("otlp-sink.log")
        sink = subprocess.Popen(
            [sys.executable, str(HERE / "otlp_sink.py"), "--host", HOST, "--port", "0", "--lifetime", str(self.lifetime)],
            stdout=subprocess.PIPE, stderr=log, env=_environment(),
        )  # fmt: skip
        self._children.append(sink)
        assert sink.stdout is not None
        line = _read_line(sink.stdout, timeout=15)
        if not line.startswith("listening on "):
            raise RuntimeError(f"the OTLP sink did not start: {line!r}; see {self.workdir / 'otlp-sink.log'}")
        return f"http://{HOST}:{int(line.split()[-1])}"

    def _own_directory(self, name: str) -> Path:
        """The gateway's working directory: what it writes there (its usage ledger) goes with the bench."""
        directory = self.workdir / name
        directory.mkdir(exist_ok=True)
        return directory

    def start_gateway(
        self, name: str, log_level: str, src: Path | None = None, server_extra: str = "", provider_extra: str = ""
    ) -> None:
        """``switchyard serve`` in front of the fake upstream; ``src``: run another source tree instead.

        ``server_extra``: more ``server:`` fields, as YAML flow-mapping items (``usage_ledger: false``);
        ``provider_extra``: more fields of the fake's provider entry (``api_key: sk-...``).
        """
        port = _free_port()
        config = self.workdir / f"{name}-config.yaml"
        extra = f", {server_extra}" if server_extra else ""
        provider = f", {provider_extra}" if provider_extra else ""
        config.write_text(
            f"server: {{host: {HOST}, port: {port}, log_level: {log_level}{extra}}}\n"
            "providers:\n"
            f"  fake: {{type: custom, base_url: 'http://{HOST}:{self.upstream_port}/v1'{provider}}}\n"
            "models:\n"
            f"  {MODEL}:\n"
            "    deployments:\n"
            "      - {provider: fake, model: fake-model}\n"
        )
        switchyard = Path(sys.executable).parent / "switchyard"
        env = _environment()
        if src is not None:
            # An experiment's scratch copy shadows the installed package.
            command = [sys.executable, "-m", "gateway"]
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
        else:
            command = [str(switchyard)] if switchyard.exists() else [sys.executable, "-m", "gateway"]
        log_path = self.workdir / f"{name}.log"
        process = subprocess.Popen(
            [*command, "serve", "--config", str(config), "--host", HOST, "--port", str(port),
             "--log-level", log_level],
            stdout=self._log(log_path.name), stderr=subprocess.STDOUT, env=env, cwd=self._own_directory(name),
        )
        self._children.append(process)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if _http_get_ok(port, "/health"):
                self.gateways[name] = (process, port)
                return
            time.sleep(0.1)
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{name} did not answer GET /health within 60 s:\n{tail}")

    def stop(self) -> None:
        for child in reversed(self._children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in reversed(self._children):
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=5)
        for log in self._logs:
            log.close()

    def _log(self, name: str) -> IO[bytes]:
        log = open(self.workdir / name, "wb")
        self._logs.append(log)
        return log


def check_with_clients(servers: Servers) -> None:
    """httpx and the openai SDK against every target, once: the framing is right, or this fails loudly."""
    import httpx
    import openai

    for name, port in servers.ports.items():
        base = f"http://{HOST}:{port}/v1"
        headers = {"content-type": "application/json", "authorization": "Bearer sk-bench"}  # as the load generator
        with httpx.Client(timeout=10, trust_env=False) as client:
            answer = client.post(f"{base}/chat/completions", content=BODY, headers=headers)
            assert answer.status_code == 200, (name, answer.status_code, answer.text)
            assert answer.json()["object"] == "chat.completion", (name, answer.text)
            with client.stream("POST", f"{base}/chat/completions", content=STREAM_BODY, headers=headers) as streamed:
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


async def check_with_loadgen(servers: Servers) -> None:
    """The load generator's parser agrees with every target: JSON, a stream, JSON again on one connection."""
    for port in servers.ports.values():
        (conn,) = await open_connections(port, 1)
        for stream in (False, True, False):
            reply = await asyncio.wait_for(conn.request(chat_request(port, stream), stream), 10)
            assert reply.ok and (reply.first_event is not None) == stream, (port, stream, reply)
        conn.close()


def _environment() -> dict[str, str]:
    # A proxy from the environment would put a third process between the bench and loopback.
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def _read_line(stream: IO[bytes], timeout: float) -> str:
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    return stream.readline().decode(errors="replace").strip()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _http_get_ok(port: int, path: str) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nhost: {HOST}\r\nconnection: close\r\n\r\n".encode())
            sock.settimeout(2)
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False
