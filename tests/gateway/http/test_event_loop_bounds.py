"""Nothing a client sends keeps the event loop busy, and nothing it sends is taken without a bound.

The gateway is served as ``switchyard serve`` serves it (uvicorn, httptools)
on a real port, in front of the fake upstream, whose streams report no usage
(OpenAI's default without ``include_usage``), so the gateway counts every
prompt itself. ``/health`` is asked every 20 ms from another thread the whole
time: each case must get its answer while ``/health`` stays prompt, at p99
under 50 ms over the module (the last test). Before the counting moved off
the loop, one streamed prompt of 8 MB of one repeated character kept
``/health`` waiting 4.3 s.
"""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from gateway.app import create_app
from gateway.config import parse_config
from tests.conftest import PLANTED_KEY
from tests.support.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServedApp

MAX_BODY_BYTES = 12 * 1024 * 1024
BIG_PROMPT = "a" * 8_000_000  # one repeated character: tiktoken's slowest kind of text
LONG_PROMPT = "a" * 2_000_000  # counted on the loop, about a second of it
HEALTH_P99 = 0.050
# No single /health wait near a freeze: the p99 is over the module, this is per case.
WORST_WAIT = 0.250

CONFIG = """
server:
  max_body_bytes: %d
  ledger_flush_interval: 0.1
  data_dir: %s
router:
  retries: {attempts: 1}
  timeout: 120
providers:
  fake:
    type: custom
    base_url: ${FAKE_URL}/v1
    api_key: ${FAKE_KEY}
    timeout: 60
models:
  gpt-test:
    deployments: [{provider: fake, model: fake-model}]
  windowed:
    context_window: 1000
    deployments: [{provider: fake, model: fake-model}]
"""


class HealthPoller:
    """``GET /health`` every 20 ms from its own thread; ``waits`` holds how long each answer took."""

    def __init__(self, url: str) -> None:
        self.waits: list[float] = []
        self._url = url
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        with httpx.Client(base_url=self._url, timeout=60) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                assert client.get("/health").status_code == 200
                self.waits.append(time.perf_counter() - started)
                self._stop.wait(0.020)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def worst_since(self, index: int) -> float:
        return max(self.waits[index:], default=0.0)


@pytest.fixture(scope="module")
def served(
    fake_upstream: tuple[FakeOpenAI, ServedApp], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServedApp, Path]]:
    data_dir = tmp_path_factory.mktemp("ledger")
    environ = {"FAKE_URL": fake_upstream[1].url, "FAKE_KEY": PLANTED_KEY}
    config = parse_config(CONFIG % (MAX_BODY_BYTES, data_dir), environ=environ)
    with ServedApp(create_app(config), server=config.server) as gateway:
        yield gateway, data_dir / "usage.sqlite3"


@pytest.fixture(scope="module")
def health(served: tuple[ServedApp, Path]) -> Iterator[HealthPoller]:
    poller = HealthPoller(served[0].url)
    poller.start()
    time.sleep(0.2)
    yield poller
    poller.stop()


@pytest.fixture()
def gateway(served: tuple[ServedApp, Path], health: HealthPoller) -> Iterator[httpx.Client]:
    """A client of the gateway; the test fails if a /health wait during it came near a freeze."""
    before = len(health.waits)
    with httpx.Client(base_url=served[0].url, timeout=120) as client:
        yield client
    time.sleep(0.1)  # a poll or two after the answer
    assert health.worst_since(before) < WORST_WAIT, f"/health waited {health.worst_since(before):.3f} s"


def chat(prompt: str, model: str = "gpt-test", **extra: object) -> bytes:
    # The last message is short: the fake answers by quoting it.
    messages = [{"role": "user", "content": prompt}, {"role": "user", "content": "hi"}]
    return orjson.dumps({"model": model, "messages": messages, **extra})


def post(client: httpx.Client, path: str, body: bytes) -> httpx.Response:
    return client.post(path, content=body, headers={"content-type": "application/json"})


def ledger_rows(ledger: Path, sql: str, *, at_least: int = 1) -> list[tuple[object, ...]]:
    """``sql``'s rows from the usage ledger, once it has at least ``at_least`` of them (counts finish after the answer)."""
    deadline = time.monotonic() + 120
    while True:
        rows = []
        if ledger.exists():
            with sqlite3.connect(ledger) as db:
                rows = db.execute(sql).fetchall()
        if len(rows) >= at_least or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def test_a_long_streamed_prompt_is_answered_and_counted_beside_the_loop(
    gateway: httpx.Client, served: tuple[ServedApp, Path]
) -> None:
    with gateway.stream("POST", "/v1/chat/completions", content=chat(BIG_PROMPT, stream=True),
                        headers={"content-type": "application/json"}) as response:  # fmt: skip
        assert response.status_code == 200
        body = b"".join(response.iter_bytes())
    assert body.endswith(b"data: [DONE]\n\n")
    # The count goes on after [DONE]; the ledger has it once it is done.
    sql = "SELECT prompt_tokens FROM usage_records WHERE stream AND estimated AND prompt_tokens > 100000"
    (prompt_tokens,) = ledger_rows(served[1], sql)[0]
    assert len(BIG_PROMPT) // 16 < prompt_tokens < len(BIG_PROMPT)  # type: ignore[operator]


def test_the_usage_chunk_of_a_long_prompt_is_counted_beside_the_loop(gateway: httpx.Client) -> None:
    # fake/no-usage: an upstream that sends no usage chunk even when asked.
    body = chat(LONG_PROMPT, model="fake/no-usage", stream=True, stream_options={"include_usage": True})
    events = post(gateway, "/v1/chat/completions", body).text.split("\n\n")
    usage = orjson.loads(events[-3].removeprefix("data: "))["usage"]  # last before [DONE] and the empty tail
    assert len(LONG_PROMPT) // 16 < usage["prompt_tokens"] < len(LONG_PROMPT)


def test_a_long_prompt_to_an_upstream_that_reports_no_usage(gateway: httpx.Client) -> None:
    response = post(gateway, "/v1/chat/completions", chat(LONG_PROMPT, model="fake/no-usage"))
    assert response.status_code == 200 and response.headers["x-switchyard-usage-estimated"] == "true"


def test_a_long_prompt_is_measured_against_a_context_window_beside_the_loop(gateway: httpx.Client) -> None:
    response = post(gateway, "/v1/chat/completions", chat(LONG_PROMPT, model="windowed"))
    assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"


def test_tokenize_a_long_prompt(gateway: httpx.Client) -> None:
    answer = post(gateway, "/v1/tokenize", orjson.dumps({"model": "gpt-test", "prompt": LONG_PROMPT})).json()
    assert answer["count"] == len(answer["tokens"]) and len(LONG_PROMPT) // 16 < answer["count"] < len(LONG_PROMPT)
    text = post(gateway, "/v1/detokenize", orjson.dumps({"model": "gpt-test", "tokens": answer["tokens"]})).json()
    assert text == {"prompt": LONG_PROMPT}


def test_tokenize_and_detokenize_bodies_past_max_body_bytes_are_413(gateway: httpx.Client) -> None:
    too_big = orjson.dumps({"model": "gpt-test", "prompt": "a" * MAX_BODY_BYTES})
    for path in ("/v1/tokenize", "/v1/detokenize"):
        response = post(gateway, path, too_big)  # with a content-length: refused before it is read
        assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"

        def chunks() -> Iterator[bytes]:  # no content-length: refused once past the limit
            for start in range(0, len(too_big), 1 << 20):
                yield too_big[start : start + (1 << 20)]

        chunked = gateway.post(path, content=chunks(), headers={"content-type": "application/json"})
        assert chunked.status_code == 413


@pytest.mark.parametrize("tokens", [[-1], [2**40], [2**64], [100256], [1, 2, -5]], ids=str)
def test_detokenize_an_id_out_of_the_encoding_is_a_400_naming_tokens(gateway: httpx.Client, tokens: list[int]) -> None:
    body = b'{"model": "gpt-test", "tokens": [' + ",".join(map(str, tokens)).encode() + b"]}"  # orjson writes no 2**64
    response = post(gateway, "/v1/detokenize", body)
    assert response.status_code == 400 and response.json()["error"]["param"] in ("tokens", "tokens[0]")


def nested(levels: int) -> bytes:
    """JSON of ``levels`` objects and arrays inside each other (orjson writes at most 254, so by hand)."""
    opening = b"".join(b"[" if level % 2 else b'{"a":' for level in range(levels))
    closing = b"".join(b"]" if level % 2 else b"}" for level in reversed(range(levels)))
    return opening + b'"deep"' + closing


@pytest.mark.parametrize("levels", [65, 256, 1024])  # the body's levels in all; orjson reads up to 1024
def test_a_field_nested_too_deep_is_a_400_naming_it(gateway: httpx.Client, levels: int) -> None:
    extra = b'{"model": "gpt-test", "messages": [{"role": "user", "content": "x"}], "metadata": %s}' % nested(
        levels - 1
    )
    response = post(gateway, "/v1/chat/completions", extra)
    assert response.status_code == 400 and response.json()["error"]["param"] == "metadata"
    # body, messages, message, content, part: five levels before the part's free-form field
    part = b'{"model": "gpt-test", "messages": [{"role": "user", "content": [{"type": "text", "text": "x", "extra": %s}]}]}'
    response = post(gateway, "/v1/chat/completions", part % nested(levels - 5))
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"
    to_tokenize = b'{"model": "gpt-test", "messages": [{"role": "user", "content": %s}]}' % nested(levels - 3)
    response = post(gateway, "/v1/tokenize", to_tokenize)
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"


def test_nesting_up_to_the_limit_is_taken(gateway: httpx.Client) -> None:
    at_the_limit = b'{"model": "gpt-test", "messages": [{"role": "user", "content": "x"}], "metadata": %s}' % nested(63)
    assert post(gateway, "/v1/chat/completions", at_the_limit).status_code == 200
    deeper_than_orjson_reads = b'{"model": "gpt-test", "x": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    assert post(gateway, "/v1/chat/completions", deeper_than_orjson_reads).status_code == 400


def test_a_long_model_name_is_a_400_never_echoed_nor_kept(
    gateway: httpx.Client, served: tuple[ServedApp, Path]
) -> None:
    huge = "m" * 10_000_000
    for path, body in [
        ("/v1/chat/completions", chat("hi", model=huge)),
        ("/v1/embeddings", orjson.dumps({"model": huge, "input": "hi"})),
        ("/v1/tokenize", orjson.dumps({"model": huge, "prompt": "hi"})),
        ("/v1/detokenize", orjson.dumps({"model": huge, "tokens": [1]})),
    ]:
        response = gateway.post(
            path, content=body, headers={"content-type": "application/json", "x-request-id": "long-model"}
        )
        assert response.status_code == 400 and response.json()["error"]["param"] == "model"
        assert len(response.content) < 1000
    assert post(gateway, "/v1/chat/completions", chat("hi", model="m" * 257)).status_code == 400
    at_the_limit = post(gateway, "/v1/chat/completions", chat("hi", model="m" * 256))
    assert at_the_limit.status_code == 404 and "m" * 256 in at_the_limit.json()["error"]["message"]
    # The two relayed requests are in the ledger, without the name.
    rows = ledger_rows(served[1], "SELECT model FROM usage_records WHERE request_id = 'long-model'", at_least=2)
    assert rows == [("",), ("",)]
    (longest,) = ledger_rows(served[1], "SELECT MAX(LENGTH(model)) FROM usage_records")[0]
    assert longest is not None and longest <= 256  # type: ignore[operator]


def head_status(port: int, head: bytes) -> bytes:
    """The status line of the answer to a raw request head."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
        connection.sendall(head)
        answer = b""
        while b"\r\n" not in answer:
            part = connection.recv(65536)
            if not part:
                break
            answer += part
    return answer.split(b"\r\n", 1)[0]


def request_head(target: bytes = b"/health", fields: list[bytes] | None = None) -> bytes:
    lines = [b"GET " + target + b" HTTP/1.1", b"host: 127.0.0.1", b"connection: close", *(fields or [])]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def test_heads_past_their_limits_are_431(gateway: httpx.Client, served: tuple[ServedApp, Path]) -> None:
    port = served[0].port
    assert (
        head_status(port, request_head(fields=[b"x-big: " + b"a" * 16_000_000]))
        == b"HTTP/1.1 431 Request Header Fields Too Large"
    )
    many = [b"x-h%d: v" % index for index in range(100_000)]
    assert head_status(port, request_head(fields=many)) == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert head_status(port, request_head(fields=many[:99])).startswith(b"HTTP/1.1 431")  # 99 + host + connection
    assert head_status(port, request_head(fields=many[:98])) == b"HTTP/1.1 200 OK"
    assert head_status(port, request_head(fields=[b"x-big: " + b"a" * 16_000])) == b"HTTP/1.1 200 OK"
    assert head_status(port, request_head(b"/v1/models/" + b"a" * 20_000)).startswith(b"HTTP/1.1 414")


def test_health_p99_stays_under_50_ms_throughout(health: HealthPoller) -> None:
    time.sleep(0.2)
    waits = sorted(health.waits)
    assert len(waits) >= 20
    p99 = waits[int(0.99 * (len(waits) - 1))]
    assert p99 < HEALTH_P99, (
        f"/health p99 {1000 * p99:.1f} ms over {len(waits)} polls (worst {1000 * waits[-1]:.0f} ms)"
    )
