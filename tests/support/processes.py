"""Run ``switchyard serve`` as a user does: a real process on a free port, its output collected."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


class GatewayProcess:
    """``with GatewayProcess(config_path, env) as gateway: gateway.url`` -- stopped (SIGTERM) on exit.

    ``config`` None: no --config (the bundled models, or --model-path in ``args``); ``cwd`` then says where it runs.
    ``port``: serve on this one, and take ``GET /health`` answering for started (at log levels above info,
    uvicorn does not say where it listens).
    """

    def __init__(
        self, config: Path | None, env: dict[str, str], *args: str, cwd: Path | None = None, port: int = 0
    ) -> None:
        config_args = ["--config", str(config)] if config is not None else []
        self._command = [sys.executable, "-m", "gateway", "serve", *config_args, "--port", str(port), *args]
        self._port = port
        self._env = {"PATH": "/usr/bin:/bin", **env}
        self._cwd = cwd or (config.parent if config is not None else None)  # a relative data_dir lands there
        self.output: list[str] = []
        self.url = ""
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> GatewayProcess:
        self._process = process = subprocess.Popen(
            self._command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self._env, cwd=self._cwd
        )
        self._reader = threading.Thread(target=lambda: self.output.extend(process.stdout), daemon=True)  # type: ignore[arg-type]
        self._reader.start()
        deadline = time.monotonic() + 60
        while not self.url and time.monotonic() < deadline and process.poll() is None:
            if self._port:
                self.url = f"http://127.0.0.1:{self._port}" if _answers_health(self._port) else ""
            else:
                found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", self.log)
                self.url = found.group(1) if found else ""
            time.sleep(0.05)
        if not self.url:
            self.stop(signal.SIGKILL)
            raise RuntimeError(f"switchyard serve did not start:\n{self.log}")
        return self

    @property
    def log(self) -> str:
        return "".join(self.output)

    def send_signal(self, sig: signal.Signals) -> None:
        assert self._process is not None
        self._process.send_signal(sig)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Send ``sig`` and wait for the process to end; its exit code."""
        assert self._process is not None
        if self._process.poll() is None:
            self._process.send_signal(sig)
        code = self._process.wait(timeout=20)
        self._reader.join(timeout=5)
        return code

    def __exit__(self, *exc_info: object) -> None:
        if self._process is not None:
            self.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers_health(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False
