"""/v1/files and /v1/batches through the official openai SDK, against the gateway served by uvicorn on a real port.

The upstreams are real HTTP servers on 127.0.0.1: ``FlakyUpstream`` (some
calls 503, some 429 with Retry-After) and tests/support's ``FakeOpenAI``
(``slow-<s>``, ``status-<code>`` models).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import httpx
import openai
import orjson
import pytest

from gateway.app import create_app
from gateway.config import parse_config
from tests.conftest import PLANTED_KEY
from tests.gateway.batches.flaky import FlakyUpstream, chat_lines
from tests.gateway.webhooks.receiver import Receiver
from tests.support.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServedApp

CONFIG = """
server:
  data_dir: "{data}"
  batch_concurrency: 4
  max_file_bytes: 65536
  api_keys:
    - {{key: sk-batch-team-a-0123456789, name: team-a}}
    - {{key: sk-batch-team-b-0123456789, name: team-b, models: [gpt-test]}}
    - {{key: sk-batch-budget-0123456789, name: thrifty, budget_tokens: 10}}
  webhooks:
    - {{url: "{hook}", secret: "{secret}", events: [batch.completed], backoff_initial: 0.05}}
router:
  retries: {{attempts: 4, backoff_initial: 0.01, backoff_max: 0.02}}
  cooldown: {{failures: 1000}}
providers:
  flaky: {{type: custom, base_url: "{flaky}/v1", api_key: sk-flaky}}
  fake: {{type: custom, base_url: "{fake}/v1", api_key: "{fake_key}"}}
models:
  gpt-test: {{deployments: [{{provider: flaky, model: flaky-model}}]}}
  slow: {{deployments: [{{provider: fake, model: slow-0.3}}]}}
  refused: {{deployments: [{{provider: fake, model: status-400}}]}}
  vanished: {{deployments: [{{provider: fake, model: status-404}}]}}
  live: {{deployments: [{{provider: fake, model: fake-model}}]}}
  busy: {{deployments: [{{provider: flaky, model: busy-6}}]}}
"""
SECRET = "whsec_" + base64.b64encode(b"switchyard-batches-webhook-key!!").decode()
TEAM_A, TEAM_B, THRIFTY = "sk-batch-team-a-0123456789", "sk-batch-team-b-0123456789", "sk-batch-budget-0123456789"


@pytest.fixture(scope="module")
def flaky() -> Iterator[tuple[FlakyUpstream, ServedApp]]:
    upstream = FlakyUpstream()
    with ServedApp(upstream.app) as served:
        yield upstream, served


@pytest.fixture(scope="module")
def hooks() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, flaky: tuple[FlakyUpstream, ServedApp],
            fake_upstream: tuple[FakeOpenAI, ServedApp], hooks: Receiver) -> Iterator[str]:  # fmt: skip
    data = tmp_path_factory.mktemp("batches")
    yaml = CONFIG.format(data=data, flaky=flaky[1].url, fake=fake_upstream[1].url, fake_key=PLANTED_KEY, hook=hooks.url,
                         secret=SECRET)  # fmt: skip
    config = parse_config(yaml, environ={})
    with ServedApp(create_app(config), server=config.server) as served:
        yield served.url


def client_for(gateway: str, key: str = TEAM_A) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway}/v1", api_key=key, max_retries=0)


def finished(client: openai.OpenAI, batch_id: str, timeout: float = 20) -> openai.types.Batch:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired") or time.monotonic() > deadline:
            return batch
        time.sleep(0.05)


def jsonl(content: bytes) -> list[dict]:
    return [orjson.loads(line) for line in content.splitlines() if line]


def test_a_file_is_uploaded_read_listed_and_deleted(gateway: str) -> None:
    client = client_for(gateway)
    content = chat_lines(3)
    uploaded = client.files.create(file=("requests.jsonl", content), purpose="batch")
    assert uploaded.object == "file" and uploaded.purpose == "batch" and uploaded.bytes == len(content)
    assert uploaded.filename == "requests.jsonl" and uploaded.id.startswith("file-")
    assert client.files.retrieve(uploaded.id) == uploaded
    assert client.files.content(uploaded.id).read() == content
    assert uploaded.id in [listed.id for listed in client.files.list(purpose="batch")]
    with pytest.raises(openai.NotFoundError) as other:  # another key's file is nobody's
        client_for(gateway, TEAM_B).files.retrieve(uploaded.id)
    assert other.value.body["param"] == "file_id"  # type: ignore[index]
    assert client.files.delete(uploaded.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.content(uploaded.id)


def test_an_upload_is_checked(gateway: str) -> None:
    client = client_for(gateway)
    with pytest.raises(openai.APIStatusError) as too_large:
        client.files.create(file=("big.jsonl", b"x" * 70_000), purpose="batch")
    assert too_large.value.status_code == 413 and too_large.value.code == "file_too_large"
    with pytest.raises(openai.BadRequestError) as purpose:
        client.files.create(file=("tune.jsonl", b"{}"), purpose="fine-tune")
    assert purpose.value.body["param"] == "purpose"  # type: ignore[index]
    answer = httpx.post(f"{gateway}/v1/files", json={"purpose": "batch"}, headers={"authorization": f"Bearer {TEAM_A}"})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "file"


def test_a_batch_is_answered_through_failing_upstream_calls(
    gateway: str, flaky: tuple[FlakyUpstream, ServedApp], hooks: Receiver
) -> None:
    client = client_for(gateway)
    upstream = flaky[0]
    failed_before = upstream.failed
    source = client.files.create(file=("requests.jsonl", chat_lines(30)), purpose="batch")
    batch = client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h",
                                  metadata={"job": "nightly"})  # fmt: skip
    assert batch.status == "validating" and batch.request_counts.total == 30 and batch.model == "gpt-test"
    done = finished(client, batch.id)
    assert done.status == "completed", done
    errors = client.files.content(done.error_file_id).read() if done.error_file_id else b""
    assert done.request_counts.completed == 30 and done.request_counts.failed == 0, errors
    assert done.error_file_id is None and done.metadata == {"job": "nightly"}
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    assert upstream.failed > failed_before  # some calls did fail, and were retried by the router
    output = jsonl(client.files.content(done.output_file_id).read())  # type: ignore[arg-type]
    assert sorted(line["custom_id"] for line in output) == sorted(f"line-{i}" for i in range(30))
    for line in output:
        assert line["error"] is None and line["id"].startswith("batch_req_")
        assert line["response"]["status_code"] == 200
        number = line["custom_id"].removeprefix("line-")
        assert line["response"]["body"]["choices"][0]["message"]["content"] == f"You said: line {number}"
    assert client.files.retrieve(done.output_file_id).purpose == "batch_output"  # type: ignore[arg-type]
    assert done.id in [listed.id for listed in client.batches.list(limit=100)]
    with pytest.raises(openai.NotFoundError):
        client_for(gateway, TEAM_B).batches.retrieve(done.id)
    deadline = time.monotonic() + 10
    while not (told := [c.event for c in hooks.delivered if c.event["data"]["batch_id"] == done.id]):
        assert time.monotonic() < deadline, "no batch.completed event"
        time.sleep(0.02)
    assert told[0]["type"] == "batch.completed"
    assert told[0]["data"] == {
        "batch_id": done.id, "status": "completed", "key": "team-a", "endpoint": "/v1/chat/completions", "total": 30,
        "completed": 30, "failed": 0, "output_file_id": done.output_file_id, "error_file_id": None,
    }  # fmt: skip


def test_failed_lines_go_to_the_error_file_in_openais_shape(gateway: str) -> None:
    client = client_for(gateway)
    lines = chat_lines(2) + chat_lines(1, model="refused", start=2) + chat_lines(1, model="vanished", start=3)
    source = client.files.create(file=("requests.jsonl", lines), purpose="batch")
    batch = client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.model is None  # several models
    done = finished(client, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 2 and done.request_counts.failed == 2
    errors = {line["custom_id"]: line for line in jsonl(client.files.content(done.error_file_id).read())}  # type: ignore[arg-type]
    assert errors["line-2"]["response"]["status_code"] == 400
    assert errors["line-2"]["response"]["body"]["error"]["message"] == "fake upstream error 400"
    assert errors["line-3"]["response"]["status_code"] == 404  # the upstream's own status, passed on
    assert errors["line-3"]["response"]["body"]["error"]["message"] == "fake upstream error 404"
    assert all(line["error"] is None and line["response"]["request_id"] for line in errors.values())
    assert len(jsonl(client.files.content(done.output_file_id).read())) == 2  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("line", "number", "wanted"),
    [
        (b"not json", 2, "not JSON"),
        (b'{"custom_id": "line-0", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-test"}}', 2, "custom_id 'line-0' is used by line 1"),
        (b'{"custom_id": "x", "method": "GET", "url": "/v1/chat/completions", "body": {"model": "gpt-test"}}', 2, "`method` must be POST"),
        (b'{"custom_id": "x", "method": "POST", "url": "/v1/embeddings", "body": {"model": "gpt-test"}}', 2, "batch's endpoint"),
        (b'{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}', 2, "`body.model`"),
        (b'{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "stream": true}}', 2, "`body.stream`"),
    ],
)
def test_a_bad_input_line_is_a_400_naming_it(gateway: str, line: bytes, number: int, wanted: str) -> None:
    client = client_for(gateway)
    source = client.files.create(file=("requests.jsonl", chat_lines(1) + line + b"\n"), purpose="batch")
    with pytest.raises(openai.BadRequestError) as refused:
        client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert refused.value.body["param"] == "input_file_id"  # type: ignore[index]
    assert f"Line {number} of the input file" in refused.value.message and wanted in refused.value.message


def test_a_batch_naming_a_model_nobody_serves_is_refused(gateway: str) -> None:
    client = client_for(gateway)
    source = client.files.create(file=("requests.jsonl", chat_lines(2) + chat_lines(1, model="nope-model", start=2)), purpose="batch")
    with pytest.raises(openai.BadRequestError) as refused:
        client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert refused.value.body["param"] == "input_file_id"  # type: ignore[index]
    assert "request 3" in refused.value.message and "'nope-model'" in refused.value.message


def test_a_batch_needs_the_keys_models_and_its_own_file(gateway: str) -> None:
    team_b = client_for(gateway, TEAM_B)
    source = team_b.files.create(file=("requests.jsonl", chat_lines(1, model="slow")), purpose="batch")
    with pytest.raises(openai.PermissionDeniedError):  # team-b may use gpt-test only
        team_b.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.BadRequestError) as foreign:  # another key's file
        client_for(gateway).batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert foreign.value.body["param"] == "input_file_id"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as window:
        team_b.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="48h")  # type: ignore[arg-type]
    assert window.value.body["param"] == "completion_window"  # type: ignore[index]


def test_a_rate_limit_past_the_routers_retries_is_waited_for_not_failed(gateway: str) -> None:
    client = client_for(gateway)  # each message: six 429s, the router's four attempts do not get past them
    source = client.files.create(file=("requests.jsonl", chat_lines(3, model="busy")), purpose="batch")
    batch = client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = finished(client, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 3 and done.request_counts.failed == 0


def test_a_spent_budget_answers_the_rest_as_error_lines(gateway: str) -> None:
    # 10 tokens; each answer uses 8, charged when it ends: 4 lines start at once, the 6th after two have ended.
    client = client_for(gateway, THRIFTY)
    source = client.files.create(file=("requests.jsonl", chat_lines(8)), purpose="batch")
    batch = client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = finished(client, batch.id)
    assert done.status == "completed" and done.request_counts.completed + done.request_counts.failed == 8
    assert 2 <= done.request_counts.completed <= 5 and done.request_counts.failed >= 3
    errors = jsonl(client.files.content(done.error_file_id).read())  # type: ignore[arg-type]
    assert {line["response"]["body"]["error"]["code"] for line in errors} == {"insufficient_quota"}


def test_a_cancelled_batch_keeps_what_was_answered(gateway: str) -> None:
    client = client_for(gateway)
    source = client.files.create(file=("requests.jsonl", chat_lines(40, model="slow")), purpose="batch")
    batch = client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    time.sleep(0.5)  # a round or two of 4 lines at 0.3 s each
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    done = finished(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at
    answered = done.request_counts.completed
    assert 0 < answered < 40 and done.request_counts.failed == 0
    assert len(jsonl(client.files.content(done.output_file_id).read())) == answered  # type: ignore[arg-type]
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)
    with pytest.raises(openai.NotFoundError):
        client.batches.cancel("batch_nobody")


def test_a_live_request_is_served_while_a_batch_runs(gateway: str) -> None:
    client = client_for(gateway)
    # 40 lines of 0.3 s, 4 at a time: 3 s at least.
    source = client.files.create(file=("requests.jsonl", chat_lines(40, model="slow")), purpose="batch")
    batch = client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    time.sleep(0.1)
    live = client.chat.completions.create(model="live", messages=[{"role": "user", "content": "now"}])
    assert live.choices[0].message.content == "You said: now"
    running = client.batches.retrieve(batch.id)  # answered before the batch: not queued behind its lines
    assert running.status == "in_progress" and running.request_counts.completed < 40  # type: ignore[union-attr]
    client.batches.cancel(batch.id)
    finished(client, batch.id)
