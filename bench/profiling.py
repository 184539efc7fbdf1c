"""Where the gateway's CPU time goes: a py-spy recording, summed by area, function and step.

py-spy writes collapsed stacks (``frame;frame;...;leaf count``). A sample's
own time belongs to its leaf frame; its total time to every frame on the
stack. Shares of samples become µs per request when multiplied by the CPU
per request the bench measured. Blind spots: C code in an extension
(orjson, pydantic-core, httptools) counts for the Python line that calls it,
and time in uvloop's C loop (epoll, recv, task switching) counts as
``Runner.run (asyncio/runners.py)`` unless ``--native`` is given.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

# Areas of code, by where the leaf frame's file is; the first match wins.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    # C frames, seen only with --native
    ("syscalls via libc (socket write/read, epoll, poll, getpid)", ("libc.so", "libpthread")),
    ("CPython runtime (GC, allocation, ...)", ("libpython",)),
    ("uvicorn + httptools (server-side HTTP parse/write)", ("uvicorn/", "httptools/")),
    ("Starlette/FastAPI (only /v1/models, health, /docs)", ("starlette/", "fastapi/")),
    ("our ASGI middleware (request id, disconnect watch)", ("gateway/http/middleware/request_id.py", "gateway/http/middleware/disconnect.py")),
    ("request validation (pydantic + parse_body)", ("pydantic/", "pydantic_core/", "gateway/http/validation.py")),
    ("relay + router (gateway/http/relay.py, router.py)", ("gateway/http/relay.py", "gateway/routing/router.py")),
    ("SSE relay (gateway/http/streaming.py, providers/sse.py)", ("gateway/http/streaming.py", "providers/sse.py")),
    ("provider adapter (providers/openai_compatible.py)", ("providers/",)),
    ("aiohttp client (+ yarl, multidict)", ("aiohttp/", "yarl/", "multidict/", "propcache/", "aiosignal/",
                                            "frozenlist/", "aiohappyeyeballs/")),
    ("logging", ("logging/",)),
    ("orjson", ("orjson",)),
    ("asyncio / uvloop event loop", ("asyncio/", "uvloop", "loop.c", "contextvars", "selectors.py", "socket.py")),
    ("enum / typing / dataclasses / other stdlib", ("enum.py", "typing.py", "dataclasses.py", "abc.py",
                                                    "functools.py", "contextlib.py", "re/")),
]

# Frames every sample passes through; left out of the "total time" table.
ROOT_FILES = ("switchyard", "gateway/process/cli.py", "gateway/__main__.py", "uvicorn/main.py", "uvicorn/server.py",
              "uvicorn/_compat.py", "asyncio/runners.py", "asyncio/base_events.py", "asyncio/events.py",
              "runpy.py", "<frozen runpy>")

# Where the time of one request goes, step by step: (label, function name prefix, file), with callees.
KEY_FUNCTIONS: list[tuple[str, str, str]] = [
    ("server: HTTP parsing (httptools callbacks)", "HttpToolsProtocol.data_received", "uvicorn/"),
    ("server: whole ASGI app for one request", "RequestResponseCycle.run_asgi", "uvicorn/"),
    ("server: uvicorn writes the response", "RequestResponseCycle.send", "uvicorn/"),
    ("server: uvicorn ProxyHeadersMiddleware", "ProxyHeadersMiddleware.__call__", "uvicorn/"),
    ("RequestIdMiddleware (incl. everything inside)", "RequestIdMiddleware.__call__", "gateway/http/middleware/request_id.py"),
    ("CancelOnDisconnectMiddleware (incl. inside)", "CancelOnDisconnectMiddleware.__call__", "gateway/disconnect"),
    ("  its disconnect watcher task", "CancelOnDisconnectMiddleware.__call__.<locals>.wait_for_disconnect",
     "gateway/disconnect"),
    ("GatewayApp._relay (incl. upstream call)", "GatewayApp._relay", "gateway/http/relay.py"),
    ("  read_body", "read_body", "gateway/http/relay.py"),
    ("  parse_body: orjson.loads + pydantic", "parse_body", "gateway/http/validation.py"),
    ("    of which pydantic model_validate", "BaseModel.model_validate", "pydantic/"),
    ("  router._first_answer (incl. upstream call)", "Router._first_answer", "gateway/routing/router.py"),
    ("aiohttp ClientSession._request (send + response head)", "ClientSession._request", "aiohttp/"),
    ("  aiohttp ClientRequest.send (write the request)", "ClientRequest.send", "aiohttp/"),
    ("  aiohttp connector: take/return a pooled connection", "BaseConnector.connect", "aiohttp/"),
    ("aiohttp ClientResponse.read (non-stream body)", "ClientResponse.read", "aiohttp/"),
    ("aiohttp ResponseHandler.data_received (parse upstream bytes)", "ResponseHandler.data_received", "aiohttp/"),
    ("aiohttp per-read timeout timer (sock_read)", "ResponseHandler._reschedule_timeout", "aiohttp/"),
    ("aiohttp StreamReader.readany (await next chunk)", "StreamReader.readany", "aiohttp/"),
    ("SSE: relay_event_stream (relay loop)", "relay_event_stream", "gateway/http/streaming.py"),
    ("SSE: EventStream.__aiter__ (read + decode)", "EventStream.__aiter__", "providers/openai_compatible.py"),
    ("SSE: SSEDecoder.feed", "SSEDecoder.feed", "providers/sse.py"),
    ("SSE: EventStream.aclose (drain, release)", "EventStream.aclose", "providers/openai_compatible.py"),
    ("logging (any logger call)", "Logger.", "logging/"),
]


async def start_recording(
    pid: int, out: Path, duration: float, *, rate: int, native: bool, blocking: bool
) -> subprocess.Popen[bytes] | None:
    """py-spy recording ``pid`` for ``duration`` seconds into ``out``; None, said on stderr, if it cannot."""
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        print("py-spy not found; pip install py-spy into the venv", file=sys.stderr)
        return None
    command = [py_spy, "record", "--pid", str(pid), "--format", "raw", "--output", str(out),
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
    return spy


async def finish_recording(spy: subprocess.Popen[bytes], duration: float) -> None:
    """Wait for py-spy to write its stacks; stop it if it overruns."""
    try:
        await asyncio.get_running_loop().run_in_executor(None, lambda: spy.wait(timeout=duration + 30))
    except subprocess.TimeoutExpired:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=10)


def summarise_profile(path: Path, cpu_ms: float, unit: str, top: int, source: str) -> str:
    """The tables printed for one recording; ``cpu_ms`` is the gateway's CPU per ``unit``, from ``source``."""
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
        for frame in {_function(f) for f in frames}:  # a set: recursion counts once
            inclusive[frame] += count

    def row(samples: int, name: str) -> str:
        return f"  {100 * samples / total:5.1f}%  {1000 * cpu_ms * samples / total:10.1f}  {name}"

    per = f"{'µs/' + unit:>10}"
    lines = [f"{total} samples; {cpu_ms:.3f} ms gateway CPU per {unit} {source}; µs = share of samples x that",
             "", "where the CPU goes, by the code running at the sample (own time):",
             f"  {'share':>6}  {per}  category"]
    lines += [row(samples, name) for name, samples in sorted(by_category.items(), key=lambda kv: -kv[1])]
    lines += ["", f"top {top} functions by own time:", f"  {'own':>6}  {per}  function (file)"]
    lines += [row(samples, frame) for frame, samples in sorted(own.items(), key=lambda kv: -kv[1])[:top]]
    lines += ["", "our own code (gateway/, providers/) by line, own time (C calls such as orjson or "
              "pydantic-core's validator count for the line that makes them):",
              f"  {'own':>6}  {per}  function (file:line)"]
    lines += [row(samples, frame) for frame, samples in sorted(own_lines.items(), key=lambda kv: -kv[1])[:12]]
    lines += ["", f"top {top} functions by total time (own + callees):", f"  {'total':>6}  {per}  function (file)"]
    ranked = [kv for kv in sorted(inclusive.items(), key=lambda kv: -kv[1])
              if not _frame_file(kv[0]).startswith(ROOT_FILES)]
    lines += [row(samples, frame) for frame, samples in ranked[:top]]
    lines += ["", "key steps, total time (own + callees; lower bounds with --profile-nonblocking):",
              f"  {'total':>6}  {per}  step"]
    for label, name, where in KEY_FUNCTIONS:
        samples = sum(count for frames, count in stacks
                      if any(f.startswith(name) and where in _frame_file(f) for f in frames))
        if samples:
            lines.append(row(samples, label))
    return "\n".join(lines)


def read_collapsed(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's raw output: (frames from the root to the leaf, samples) per distinct stack."""
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        frames_text, _, count = line.rpartition(" ")
        if not frames_text or not count.isdigit():
            continue
        frames = [f for f in frames_text.split(";") if not f.startswith(("process ", "thread "))]
        if frames:
            stacks.append((frames, int(count)))
    return stacks


def categorise(frame: str) -> str:
    location = _frame_file(frame)
    for name, markers in CATEGORIES:
        if any(marker in location for marker in markers):
            return name
    return "other"


def _frame_file(frame: str) -> str:
    """``f (file.py:12)`` -> ``file.py:12``."""
    at = frame.rfind(" (")
    return frame[at + 2 : -1] if at >= 0 and frame.endswith(")") else frame


def _function(frame: str) -> str:
    """``f (file.py:12)`` -> ``f (file.py)``: line-level samples summed per function."""
    at = frame.rfind(":")
    return frame[:at] + ")" if at > frame.rfind(" (") and frame[at + 1 : -1].isdigit() else frame
