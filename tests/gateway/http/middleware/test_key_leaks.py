"""No configured key reaches a client or a log line, whatever the upstream echoes, and no key follows a redirect.

``switchyard serve`` runs as a user runs it (its own process, its own
logging) at every log level, in front of an upstream that echoes the key
it was sent everywhere it can (``tests/support/fakes/leaky.py``): an error's
message, type, param and code (401 and 400), an error event inside a
started stream, a 200 body, a response header, and a 302 / 307 to a second
server on another port that records whoever reaches it. Each is driven
streamed and not, for chat and embeddings, with the key sent as
``Authorization: Bearer`` and as Azure's ``api-key``, by raw HTTP (every
header and body byte) and through the official openai SDK (what its
exceptions say).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import openai
import pytest

from tests.conftest import PLANTED_KEY
from tests.support.fakes.leaky import Doorstep, LeakyUpstream
from tests.support.processes import GatewayProcess, free_port
from tests.support.servers import ServedApp

PROVIDERS = ("bearer", "azure-style")
CHAT_CASES = [(model, stream) for model in ("error-401", "error-400", "echo", "redirect-302", "redirect-307")
              for stream in (False, True)] + [("error-event", True)]  # fmt: skip
EMBEDDING_CASES = ["error-401", "error-400", "echo", "redirect-302", "redirect-307"]
LOGGING = [(level, "text") for level in ("debug", "info", "warning", "error", "critical")] + [("debug", "json")]
HI = [{"role": "user", "content": "hi"}]
MASKED = "[redacted]"


@dataclass
class Traffic:
    """What the clients received, what the gateway logged, who reached the second server."""

    client_bytes: list[str] = field(default_factory=list)  # per answer: status, raw headers, body
    answers: dict[tuple[str, str, bool], httpx.Response] = field(default_factory=dict)
    sdk_errors: list[str] = field(default_factory=list)
    level: str = ""
    log: str = ""
    visits: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[ServedApp, Doorstep]]:
    doorstep = Doorstep()
    with ServedApp(doorstep) as elsewhere, ServedApp(LeakyUpstream(redirect_to=elsewhere.url)) as leaky:
        yield leaky, doorstep


@pytest.fixture(scope="module", params=LOGGING, ids=[f"{level}-{fmt}" for level, fmt in LOGGING])
def traffic(
    request: pytest.FixtureRequest, upstreams: tuple[ServedApp, Doorstep], tmp_path_factory: pytest.TempPathFactory
) -> Traffic:
    level, log_format = request.param
    leaky, doorstep = upstreams
    config = tmp_path_factory.mktemp("leaks") / "providers.yaml"
    config.write_text(
        f"server: {{log_level: {level}, log_format: {log_format}, access_log: true, usage_ledger: false}}\n"
        "providers:\n"
        f"  bearer: {{type: custom, base_url: '{leaky.url}/v1', api_key: '${{LEAKY_KEY}}'}}\n"
        f"  azure-style: {{type: custom, base_url: '{leaky.url}/v1', api_key: '${{LEAKY_KEY}}', auth: api-key}}\n"
    )
    doorstep.visits.clear()
    traffic = Traffic(level=level)
    with GatewayProcess(config, {"LEAKY_KEY": PLANTED_KEY}, "--log-level", level, port=free_port()) as gateway:
        _drive(gateway.url, traffic)
        time.sleep(0.3)  # the last log lines
        traffic.log = gateway.log
    traffic.visits = list(doorstep.visits)
    return traffic


def _drive(url: str, traffic: Traffic) -> None:
    with httpx.Client(base_url=url, timeout=10) as http:
        for provider in PROVIDERS:
            for model, stream in CHAT_CASES:
                body = {"model": f"{provider}/{model}", "messages": HI, "stream": stream}
                _record(traffic, (provider, model, stream), http.post("/v1/chat/completions", json=body))
            for model in EMBEDDING_CASES:
                body = {"model": f"{provider}/{model}", "input": "hi"}
                _record(traffic, (provider, f"embeddings-{model}", False), http.post("/v1/embeddings", json=body))
        for path in ("/health/ready", "/health", "/metrics", "/v1/models", "/openapi.json"):
            _record(traffic, ("gateway", path, False), http.get(path))
    sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="client-key", max_retries=0, timeout=10)
    for provider in PROVIDERS:
        for model, stream in CHAT_CASES:
            try:
                name = f"{provider}/{model}"
                answer = sdk.chat.completions.create(model=name, messages=HI, stream=stream)  # type: ignore[call-overload]
                said = "".join(str(c.choices[0].delta.content) for c in answer) if stream else answer.model_dump_json()
                traffic.sdk_errors.append(said)
            except Exception as error:  # an APIError, or whatever else a broken answer makes the SDK raise
                traffic.sdk_errors.append(f"{type(error).__name__}: {error} {getattr(error, 'body', None)!r}")
        for model in EMBEDDING_CASES:
            try:
                traffic.sdk_errors.append(sdk.embeddings.create(model=f"{provider}/{model}", input="hi").model_dump_json())
            except Exception as error:  # an APIError, or whatever else a broken answer makes the SDK raise
                traffic.sdk_errors.append(f"{type(error).__name__}: {error} {getattr(error, 'body', None)!r}")
    sdk.close()


def _record(traffic: Traffic, case: tuple[str, str, bool], response: httpx.Response) -> None:
    raw_headers = "".join(f"{name.decode()}: {value.decode()}\n" for name, value in response.headers.raw)
    traffic.client_bytes.append(f"{response.status_code}\n{raw_headers}\n{response.content.decode()}")
    traffic.answers[case] = response


def test_no_key_in_any_byte_a_client_received(traffic: Traffic) -> None:
    assert len(traffic.client_bytes) == 2 * (len(CHAT_CASES) + len(EMBEDDING_CASES)) + 5
    for received in traffic.client_bytes + traffic.sdk_errors:
        assert PLANTED_KEY not in received, received


def test_no_key_in_any_log_line(traffic: Traffic) -> None:
    assert PLANTED_KEY not in traffic.log
    # There were lines to leak into: the access log's, and the warning about each broken stream.
    if traffic.level in ("debug", "info"):
        assert "POST /v1/chat/completions" in traffic.log
    if traffic.level in ("debug", "info", "warning"):
        assert "stream from bearer interrupted" in traffic.log


def test_no_redirect_was_followed(traffic: Traffic) -> None:
    """Not the api-key header (aiohttp keeps it across origins), not Authorization, not the request at all."""
    assert traffic.visits == []
    for provider in PROVIDERS:
        for status in (302, 307):
            for model, stream in ((f"redirect-{status}", False), (f"redirect-{status}", True),
                                  (f"embeddings-redirect-{status}", False)):  # fmt: skip
                answer = traffic.answers[(provider, model, stream)]
                assert answer.status_code == 502, answer.text
                error = answer.json()["error"]
                assert error["code"] == "upstream_redirect" and f"answered HTTP {status}, a redirect to" in error["message"]


def test_what_the_upstream_said_still_arrives_with_the_key_masked(traffic: Traffic) -> None:
    """The masks keep each answer's shape: errors keep their status and fields, streams their events, 200s their body."""
    for provider in PROVIDERS:
        for model, status in (("error-401", 401), ("error-400", 400), ("embeddings-error-401", 401)):
            answer = traffic.answers[(provider, model, False)]
            assert answer.status_code == status
            assert int(answer.headers["content-length"]) == len(answer.content)
            error = answer.json()["error"]
            assert error["message"].startswith(f"Incorrect API key provided: {MASKED}")
            assert all(error[name].startswith(MASKED) for name in ("type", "param", "code"))
            streamed = traffic.answers[(provider, model, True)] if not model.startswith("embeddings") else None
            assert streamed is None or streamed.status_code == status
        echoed = traffic.answers[(provider, "echo", False)]
        assert echoed.json()["choices"][0]["message"]["content"].startswith(f"the key is {MASKED}")
        assert traffic.answers[(provider, "embeddings-echo", False)].json()["model"].startswith(MASKED)
        streamed = traffic.answers[(provider, "echo", True)].text
        assert streamed.endswith("data: [DONE]\n\n") and f"the key is {MASKED}" in streamed
        broken = traffic.answers[(provider, "error-event", True)].text
        assert f"upstream failed for key {MASKED}" in broken and "data: [DONE]" not in broken
    assert any(f"upstream failed for key {MASKED}" in said for said in traffic.sdk_errors)  # the SDK raised it, masked
