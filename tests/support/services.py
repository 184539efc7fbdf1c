"""Real PostgreSQL and Redis servers for the tests, from Debian's packages, on 127.0.0.1.

Each server is started in a temporary directory on a free port and stopped
at the end of the session. When a server's package is missing and the
tests run as root with apt-get at hand, it is installed first; otherwise
its tests are skipped, except under CI (``CI=true``), where a missing
server is a failure: CI must run them.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

DEBIAN_PACKAGES = ("postgresql", "redis-server")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI must run these tests (.ci/run installs {' and '.join(DEBIAN_PACKAGES)})")
    pytest.skip(reason)


def _install_once() -> None:
    """apt-get install the servers, when this session may (root, apt-get present)."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
    subprocess.run(["apt-get", "install", "-y", "-qq", *DEBIAN_PACKAGES], env=env, capture_output=True, timeout=600)


def _postgres_bin() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


def _wait_until(ready: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start within {timeout:.0f}s")


@contextmanager
def postgres_server() -> Iterator[str]:
    """A fresh PostgreSQL cluster; yields its URL (user ``switchyard``, database ``postgres``, trust auth)."""
    if _postgres_bin() is None:
        _install_once()
    bin_dir = _postgres_bin()
    if bin_dir is None:
        _missing("PostgreSQL is not installed (apt-get install postgresql)")
    assert bin_dir is not None
    root = Path(tempfile.mkdtemp(prefix="switchyard-pg-"))
    # PostgreSQL refuses to run as root: run it as the package's own user then.
    as_user: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = root / "data"
    subprocess.run(
        [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "switchyard", "--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    port = free_port()
    server = subprocess.Popen(
        [*as_user, str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(root),
         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_until(
            lambda: subprocess.run(
                [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True
            ).returncode == 0,
            "PostgreSQL",
        )  # fmt: skip
        yield f"postgresql://switchyard@127.0.0.1:{port}/postgres"
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def redis_server() -> Iterator[str]:
    """A fresh redis-server with no persistence; yields its URL."""
    if shutil.which("redis-server") is None:
        _install_once()
    binary = shutil.which("redis-server")
    if binary is None:
        _missing("Redis is not installed (apt-get install redis-server)")
    assert binary is not None
    port = free_port()
    root = Path(tempfile.mkdtemp(prefix="switchyard-redis-"))
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(root)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    try:
        _wait_until(answers, "Redis")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
