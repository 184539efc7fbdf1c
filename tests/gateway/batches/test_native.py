"""Batches passed to the provider's own Batch API (``batch: {mode: native}``), through the official openai SDK.

The gateway is served by uvicorn on a real port; the provider is
tests/support's ``FakeBatchAPI``, OpenAI's (and Azure's) Files and Batch
APIs served for real on 127.0.0.1. What is checked is what a user pays
for: the provider gets one upload and one batch (never two, even when the
create's answer is lost or the gateway restarts), the lines come back in
OpenAI's output and error files, and each line is in the ledger at the
batch price.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import orjson
import pytest

from gateway.app import create_app
from gateway.config import GatewayConfig, parse_config
from gateway.errors import ConfigError
from tests.support.fakes.batch_upstream import COMPLETION_TOKENS, PROMPT_TOKENS, FakeBatchAPI
from tests.support.servers import ServedApp

PROVIDER_KEY = "sk-provider-batch-0123456789"
TEAM_KEY = "sk-native-team-0123456789"
THRIFTY_KEY = "sk-native-thrifty-0123456789"
CONFIG = """
server:
  data_dir: "{data}"
  ledger_flush_interval: 0.05
  api_keys:
    - {{key: {team}, name: team}}
    - {{key: {thrifty}, name: thrifty, budget_usd: 0.002}}
providers:
  openai: {{type: openai, base_url: "{fake}/v1", api_key: {provider_key}}}
  azure: {{type: azure, base_url: "{fake}", api_key: azure-batch-key-0123456789}}
models:
  mini:
    deployments: [{{provider: openai, model: gpt-4o-mini-2024-07-18}}]
    price: {{input_per_mtok: 1.0, output_per_mtok: 4.0}}
    batch: {{mode: native, poll_interval: 0.05}}
  on-azure:
    deployments: [{{provider: azure, model: gpt-4o-mini-batch}}]
    price: {{input_per_mtok: 1.0, output_per_mtok: 4.0}}
    batch: {{mode: native, poll_interval: 0.05, discount: 0.4}}
  live:
    deployments: [{{provider: openai, model: gpt-4o-mini-2024-07-18}}]
"""
LIVE_COST = (PROMPT_TOKENS * 1.0 + COMPLETION_TOKENS * 4.0) / 1e6


def config_for(data: Path, fake: ServedApp, provider_key: str = PROVIDER_KEY) -> GatewayConfig:
    yaml = CONFIG.format(data=data, fake=fake.url, team=TEAM_KEY, thrifty=THRIFTY_KEY, provider_key=provider_key)
    return parse_config(yaml, environ={})


@pytest.fixture
def provider() -> Iterator[tuple[FakeBatchAPI, ServedApp]]:
    fake = FakeBatchAPI(api_key=PROVIDER_KEY)
    with ServedApp(fake) as served:
        yield fake, served


def lines(model: str, said: list[str]) -> bytes:
    return b"".join(orjson.dumps({"custom_id": f"line-{n}", "method": "POST", "url": "/v1/chat/completions",
                                  "body": {"model": model, "messages": [{"role": "user", "content": text}]}}) + b"\n"
                    for n, text in enumerate(said))  # fmt: skip


def submitted(gateway: str, model: str, said: list[str], key: str = TEAM_KEY) -> tuple[openai.OpenAI, openai.types.Batch]:
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=key, max_retries=0)
    source = client.files.create(file=("in.jsonl", lines(model, said)), purpose="batch")
    return client, client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")


def ended(client: openai.OpenAI, batch_id: str, timeout: float = 20) -> openai.types.Batch:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.05)


def jsonl(content: bytes) -> list[dict]:
    return [orjson.loads(line) for line in content.splitlines() if line]


def ledger_rows(data: Path, count: int, timeout: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(data / "usage.sqlite3") as db:
            db.row_factory = sqlite3.Row
            rows = [dict(row) for row in db.execute("SELECT * FROM usage_records ORDER BY request_id")]
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


@pytest.mark.parametrize(("model", "provider_name", "upstream_model", "discount"), [
    ("mini", "openai", "gpt-4o-mini-2024-07-18", 0.5), ("on-azure", "azure", "gpt-4o-mini-batch", 0.4),
])  # fmt: skip
def test_a_batch_is_run_by_the_provider_and_priced_at_its_discount(
    tmp_path: Path, provider: tuple[FakeBatchAPI, ServedApp], model: str, provider_name: str, upstream_model: str,
    discount: float,
) -> None:  # fmt: skip
    fake, served = provider
    with ServedApp(create_app(config_for(tmp_path, served))) as gateway:
        client, batch = submitted(gateway.url, model, ["one", "two", "fail-400", "three"])
        assert batch.status == "validating" and batch.model == model
        done = ended(client, batch.id)
        assert done.status == "completed", done.errors
        assert done.request_counts is not None and (done.request_counts.completed, done.request_counts.failed) == (3, 1)
        output = jsonl(client.files.content(done.output_file_id).read())  # type: ignore[arg-type]
        errors = jsonl(client.files.content(done.error_file_id).read())  # type: ignore[arg-type]
        rows = ledger_rows(tmp_path, 4)
    # The provider got the lines once, as it takes them: its model name, Azure's url without /v1.
    sent = fake.uploaded_lines()
    assert [line["custom_id"] for line in sent] == ["line-0", "line-1", "line-2", "line-3"]
    assert {line["body"]["model"] for line in sent} == {upstream_model}
    assert {line["url"] for line in sent} == {"/chat/completions" if provider_name == "azure" else "/v1/chat/completions"}
    assert len(fake.batches) == 1 and len(fake.uploads) == 1
    assert fake.deleted == [next(iter(fake.batches.values()))["input_file_id"]]  # the gateway's upload is cleaned up
    # OpenAI's output and error files, each line under its custom_id.
    assert [line["custom_id"] for line in output] == ["line-0", "line-1", "line-3"]
    assert output[0]["response"]["body"]["choices"][0]["message"]["content"] == "You said: one"
    openai.types.chat.ChatCompletion.model_validate(output[0]["response"]["body"])
    assert [line["custom_id"] for line in errors] == ["line-2"] and errors[0]["response"]["status_code"] == 400
    # One ledger record per line, at the batch price.
    assert [row["request_id"] for row in rows] == [f"{batch.id}-{n}" for n in range(4)]
    assert [row["status"] for row in rows] == [200, 200, 400, 200]
    assert {(row["model"], row["provider"], row["deployment"], row["api_key"]) for row in rows} == {
        (model, provider_name, upstream_model, "team")}
    answered = [row for row in rows if row["status"] == 200]
    assert all(row["prompt_tokens"] == PROMPT_TOKENS and row["completion_tokens"] == COMPLETION_TOKENS for row in answered)
    assert all(row["cost_usd"] == pytest.approx(LIVE_COST * (1 - discount)) for row in answered)
    assert all(row["price_source"] == f"config, batch {discount:.0%} off" for row in answered)
    assert all(row["latency_ms"] == 0 for row in rows)  # a line's time in the provider's queue is not known


def test_a_create_whose_answer_was_lost_is_found_not_sent_again(tmp_path: Path, provider: tuple[FakeBatchAPI, ServedApp]) -> None:
    fake, served = provider
    fake.create_failures, fake.read_429s = 1, 2  # the batch is made but the answer is a 503; then two reads are 429s
    with ServedApp(create_app(config_for(tmp_path, served))) as gateway:
        client, batch = submitted(gateway.url, "mini", ["one", "two"])
        done = ended(client, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 2  # type: ignore[union-attr]
    assert len(fake.batches) == 1 and len(fake.uploads) == 1
    assert [call for call in fake.calls if call == ("POST", "batches")] == [("POST", "batches")]
    assert ("GET", "batches") in fake.calls  # looked for by its tag
    assert next(iter(fake.batches.values()))["metadata"] == {"switchyard_batch_id": batch.id}


def test_a_line_the_provider_left_out_is_an_error_line(tmp_path: Path, provider: tuple[FakeBatchAPI, ServedApp]) -> None:
    _, served = provider
    with ServedApp(create_app(config_for(tmp_path, served))) as gateway:
        client, batch = submitted(gateway.url, "mini", ["one", "omit"])
        done = ended(client, batch.id)
        errors = jsonl(client.files.content(done.error_file_id).read())  # type: ignore[arg-type]
    assert done.status == "completed" and (done.request_counts.completed, done.request_counts.failed) == (1, 1)  # type: ignore[union-attr]
    assert [(e["custom_id"], e["response"], e["error"]["code"]) for e in errors] == [("line-1", None, "missing_from_provider_output")]


def test_a_restart_follows_the_same_provider_batch(tmp_path: Path, provider: tuple[FakeBatchAPI, ServedApp]) -> None:
    fake, served = provider
    fake.reads_to_finish = 10**9  # runs until the test lets it finish
    config = config_for(tmp_path, served)
    with ServedApp(create_app(config)) as gateway:
        client, batch = submitted(gateway.url, "mini", ["one", "two", "three"])
        deadline = time.monotonic() + 10
        while client.batches.retrieve(batch.id).request_counts.total != 3:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.batches.retrieve(batch.id).status == "in_progress"
    fake.reads_to_finish = 0
    with ServedApp(create_app(config)) as gateway:
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=TEAM_KEY, max_retries=0)
        done = ended(client, batch.id)
        assert done.status == "completed" and done.request_counts.completed == 3  # type: ignore[union-attr]
        assert len(jsonl(client.files.content(done.output_file_id).read())) == 3  # type: ignore[arg-type]
        rows = ledger_rows(tmp_path, 3)
    assert len(fake.batches) == 1 and len(fake.uploads) == 1
    assert len(rows) == 3


def test_a_cancel_is_passed_to_the_provider(tmp_path: Path, provider: tuple[FakeBatchAPI, ServedApp]) -> None:
    fake, served = provider
    fake.reads_to_finish = 10**9
    with ServedApp(create_app(config_for(tmp_path, served))) as gateway:
        client, batch = submitted(gateway.url, "mini", ["one", "two"])
        deadline = time.monotonic() + 10
        while not fake.batches:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert client.batches.cancel(batch.id).status == "cancelling"
        done = ended(client, batch.id)
    upstream = next(iter(fake.batches.values()))
    assert done.status == "cancelled" and upstream["status"] == "cancelled"
    assert ("POST", f"batches/{upstream['id']}/cancel") in fake.calls
    assert done.output_file_id is None and done.error_file_id is None


def test_the_providers_refusal_fails_the_batch_with_its_reasons(tmp_path: Path, provider: tuple[FakeBatchAPI, ServedApp]) -> None:
    fake, served = provider
    with ServedApp(create_app(config_for(tmp_path, served, provider_key="sk-wrong-provider-key-000"))) as gateway:
        client, batch = submitted(gateway.url, "mini", ["one"])
        done = ended(client, batch.id)
    assert done.status == "failed" and done.errors is not None and done.errors.data
    error = done.errors.data[0]
    assert error.code == "native_batch_refused" and "Incorrect API key" in (error.message or "")
    assert "sk-wrong-provider-key-000" not in (error.message or "") and not fake.batches


def test_a_batch_the_provider_fails_in_validation_carries_its_errors(
    tmp_path: Path, provider: tuple[FakeBatchAPI, ServedApp], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, served = provider
    # The provider's own validation (here: a line's url it refuses) is its to report: the gateway passes it on.
    monkeypatch.setattr("providers.batch_api.UpstreamBatches.line_url", lambda self, endpoint: "/v1/other")
    monkeypatch.setattr(fake, "_create", _accepting_any_endpoint(fake))
    with ServedApp(create_app(config_for(tmp_path, served))) as gateway:
        client, batch = submitted(gateway.url, "mini", ["one"])
        done = ended(client, batch.id)
    assert done.status == "failed" and done.errors is not None
    assert [(e.code, e.line) for e in done.errors.data or []] == [("invalid_request", 1)]


def _accepting_any_endpoint(fake: FakeBatchAPI):  # type: ignore[no-untyped-def]
    create = FakeBatchAPI._create

    def accept(body: dict, azure: bool):  # type: ignore[no-untyped-def]
        status, answer, headers = create(fake, {**body, "endpoint": "/v1/chat/completions"}, azure)
        if status == 200:
            answer["endpoint"] = "/v1/chat/completions"
        return status, answer, headers

    return accept


def test_a_spent_budget_refuses_a_new_native_batch(tmp_path: Path, provider: tuple[FakeBatchAPI, ServedApp]) -> None:
    _, served = provider
    with ServedApp(create_app(config_for(tmp_path, served))) as gateway:
        # 3 lines at 0.0009 each: 0.0027, past the key's 0.002; the batch was admitted with room, so it runs whole.
        client, batch = submitted(gateway.url, "mini", ["one", "two", "three"], key=THRIFTY_KEY)
        assert ended(client, batch.id).status == "completed"
        source = client.files.create(file=("in.jsonl", lines("mini", ["four"])), purpose="batch")
        with pytest.raises(openai.RateLimitError) as refused:
            client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert refused.value.code == "insufficient_quota"


def test_which_batches_go_to_the_provider(tmp_path: Path) -> None:
    from gateway.batches.native import plan

    yaml = CONFIG.format(data=tmp_path, fake="http://127.0.0.1:9", team=TEAM_KEY, thrifty=THRIFTY_KEY, provider_key=PROVIDER_KEY)
    config = parse_config(yaml, environ={})
    state = plan(config, "/v1/chat/completions", ["mini"])
    assert state is not None and (state.provider, state.model, state.discount) == ("openai", "gpt-4o-mini-2024-07-18", 0.5)
    assert plan(config, "/v1/chat/completions", ["live"]) is None  # mode gateway (the default)
    assert plan(config, "/v1/chat/completions", ["live", "mini"]) is None  # several models: the gateway runs it
    assert plan(config, "/v1/embeddings", ["on-azure"]) is not None  # Azure offers embeddings
    with pytest.raises(ConfigError) as refused:
        parse_config("""
providers:
  tg: {type: together, api_key: k}
models:
  m: {deployments: [{provider: tg, model: x}], batch: {mode: native}}
""", environ={})  # fmt: skip
    assert "models.m.batch.mode: native needs a deployment on a provider with a Batch API (openai, groq, azure, custom)" in str(refused.value)
