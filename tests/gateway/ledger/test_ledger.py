"""The usage ledger: one record per request, summed by ``GET /v1/usage``, kept across restarts and crashes."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gateway.app import create_app
from gateway.config import GatewayConfig, ServerConfig, parse_config
from gateway.ledger import LedgerWriter, UsageQuery, UsageRecord, open_store
from tests.conftest import GATEWAY_YAML, PLANTED_KEY
from tests.gateway.routes.test_usage import PROMPT_TOKENS
from tests.support.fakes.openai_upstream import FakeOpenAI
from tests.support.processes import GatewayProcess
from tests.support.servers import ServedApp

TEAM_KEY = "sk-team-ledger-0123"
ADMIN_KEY = "sk-admin-ledger-4567"
HI = [{"role": "user", "content": "hello there"}]


def keyed_config(base: GatewayConfig, server_yaml: str, environ: dict[str, str] | None = None) -> GatewayConfig:
    """The shared test config (its providers point at the fake upstream) with ``server_yaml`` as its server."""
    text = GATEWAY_YAML.replace("router:\n", "server:\n" + server_yaml + "router:\n", 1)
    environ = {"FAKE_URL": "http://unused", "FAKE_KEY": "x", "WRONG_KEY": "y", **(environ or {})}
    return parse_config(text, environ=environ).model_copy(update={"providers": base.providers})


def ledger_yaml(data_dir: Path, extra: str = "") -> str:
    return f"""
  data_dir: {data_dir}
  ledger_flush_interval: 0.05
  admin_keys: ["{ADMIN_KEY}"]
  api_keys:
    - {{key: "{TEAM_KEY}", name: team-a, models: [gpt-test, embed-test, fake/*]{extra}}}
"""


@pytest.fixture()
def ledger_gateway(gateway_config: GatewayConfig, tmp_path: Path) -> Iterator[str]:
    with ServedApp(create_app(keyed_config(gateway_config, ledger_yaml(tmp_path)))) as served:
        yield served.url


def usage(url: str, key: str = ADMIN_KEY, **params: str) -> httpx.Response:
    return httpx.get(f"{url}/v1/usage", params=params, headers={"Authorization": f"Bearer {key}"})


def test_every_request_is_recorded_and_summed(ledger_gateway: str) -> None:
    team = openai.OpenAI(base_url=f"{ledger_gateway}/v1", api_key=TEAM_KEY, max_retries=0)
    answered = team.chat.completions.create(model="gpt-test", messages=HI)
    streamed = list(team.chat.completions.create(model="gpt-test", messages=HI, stream=True))
    team.embeddings.create(model="embed-test", input="hello")
    with pytest.raises(openai.APIStatusError):
        team.chat.completions.create(model="fake/status-500", messages=HI)
    admin = openai.OpenAI(base_url=f"{ledger_gateway}/v1", api_key=ADMIN_KEY, max_retries=0)
    estimated = admin.chat.completions.with_raw_response.create(model="fake/no-usage", messages=HI)
    assert estimated.headers["x-switchyard-usage-estimated"] == "true"

    body = usage(ledger_gateway).json()
    assert body["object"] == "usage.summary" and body["group_by"] == ["api_key", "model"]
    groups = {(row["api_key"], row["model"]): row for row in body["data"]}
    chat = groups[("team-a", "gpt-test")]
    assert chat["requests"] == 2 and chat["failed_requests"] == 0
    assert answered.usage is not None
    # The stream's usage is counted though the client did not ask for it: as its text, estimated.
    streamed_text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
    assert streamed_text == answered.choices[0].message.content
    assert chat["prompt_tokens"] == answered.usage.prompt_tokens + PROMPT_TOKENS  # the fake's figure + the estimate
    assert groups[("team-a", "fake/status-500")]["failed_requests"] == 1
    assert groups[("admin", "fake/no-usage")]["estimated_requests"] == 1
    totals = body["totals"]
    assert totals["requests"] == 5 == sum(row["requests"] for row in body["data"])
    assert totals["total_tokens"] == totals["prompt_tokens"] + totals["completion_tokens"] > 0


def test_usage_filters_by_key_model_and_time(ledger_gateway: str) -> None:
    team = openai.OpenAI(base_url=f"{ledger_gateway}/v1", api_key=TEAM_KEY, max_retries=0)
    team.chat.completions.create(model="gpt-test", messages=HI)
    # The record is made once the answer has gone out, so the client can read it first: wait for the record.
    deadline = time.monotonic() + 5
    while usage(ledger_gateway, group_by="").json()["totals"]["requests"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    middle = time.time()
    time.sleep(0.01)
    team.chat.completions.create(model="gpt-test", messages=HI)
    team.embeddings.create(model="embed-test", input="hello")
    assert usage(ledger_gateway, model="gpt-test", group_by="").json()["totals"]["requests"] == 2
    assert usage(ledger_gateway, start_time=str(middle), group_by="").json()["totals"]["requests"] == 2
    assert usage(ledger_gateway, end_time=str(middle), group_by="").json()["totals"]["requests"] == 1
    assert usage(ledger_gateway, api_key="nobody").json()["totals"]["requests"] == 0
    by_endpoint = usage(ledger_gateway, api_key="team-a", group_by="endpoint,provider").json()["data"]
    assert [(row["provider"], row["endpoint"], row["requests"]) for row in by_endpoint] == [
        ("fake", "chat/completions", 2), ("fake", "embeddings", 1)
    ]  # fmt: skip


def test_only_admin_keys_read_usage(ledger_gateway: str) -> None:
    assert usage(ledger_gateway, key=TEAM_KEY).json()["error"]["code"] == "admin_key_required"
    assert usage(ledger_gateway, key=TEAM_KEY).status_code == 403
    assert usage(ledger_gateway, key="sk-nobody").status_code == 401
    bad = usage(ledger_gateway, group_by="api_key,colour")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "group_by"
    bad = usage(ledger_gateway, start_time="yesterday")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "start_time"


def test_past_its_tpm_a_key_gets_429_naming_tokens(gateway_config: GatewayConfig, tmp_path: Path) -> None:
    config = keyed_config(gateway_config, ledger_yaml(tmp_path, ", tpm: 20"))
    with ServedApp(create_app(config)) as served:
        team = openai.OpenAI(base_url=f"{served.url}/v1", api_key=TEAM_KEY, max_retries=0)
        first = team.chat.completions.with_raw_response.create(model="gpt-test", messages=HI)
        assert first.headers["x-ratelimit-limit-tokens"] == "20"
        assert first.headers["x-ratelimit-remaining-tokens"] == "20"  # before this answer's tokens
        spent = first.parse().usage.total_tokens  # type: ignore[union-attr]
        while spent < 20:
            spent += team.chat.completions.create(model="gpt-test", messages=HI).usage.total_tokens  # type: ignore[union-attr]
        with pytest.raises(openai.RateLimitError) as caught:
            team.chat.completions.create(model="gpt-test", messages=HI)
    error = caught.value
    assert error.type == "tokens" and error.code == "rate_limit_exceeded"
    assert int(error.response.headers["retry-after"]) >= 1
    assert error.response.headers["x-ratelimit-remaining-tokens"] == "0"


def test_a_budget_is_enforced_and_survives_a_restart(gateway_config: GatewayConfig, tmp_path: Path) -> None:
    config = keyed_config(gateway_config, ledger_yaml(tmp_path, ", budget_tokens: 30"))
    with ServedApp(create_app(config)) as served:
        team = openai.OpenAI(base_url=f"{served.url}/v1", api_key=TEAM_KEY, max_retries=0)
        remaining = team.chat.completions.with_raw_response.create(model="gpt-test", messages=HI)
        spent = remaining.parse().usage.total_tokens  # type: ignore[union-attr]
        assert remaining.headers["x-switchyard-budget-remaining-tokens"] == "30"
    # A new process on the same data directory starts from what the ledger says was spent.
    with ServedApp(create_app(config)) as served:
        team = openai.OpenAI(base_url=f"{served.url}/v1", api_key=TEAM_KEY)  # the SDK's retries on
        raw = team.chat.completions.with_raw_response.create(model="gpt-test", messages=HI)
        assert raw.headers["x-switchyard-budget-remaining-tokens"] == str(30 - spent)
        while True:
            try:
                team.chat.completions.create(model="gpt-test", messages=HI)
            except openai.RateLimitError as refused:
                error = refused
                break
        assert error.code == "insufficient_quota" and error.type == "insufficient_quota"
        assert error.response.headers["x-should-retry"] == "false"
        assert usage(served.url, api_key="team-a", group_by="").json()["totals"]["failed_requests"] == 1


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_stores_sum_alike(store: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("postgres_url") if store == "postgres" else None
    server = ServerConfig(data_dir=tmp_path, database_url=url)  # type: ignore[arg-type]
    ledger = open_store(server)
    try:
        if store == "postgres":
            ledger._connection().execute("TRUNCATE usage_records")  # type: ignore[attr-defined]
        base = dict(request_id="r", endpoint="chat/completions", provider="p", deployment="d", stream=False,
                    estimated=False, latency_ms=1.5, status=200)  # fmt: skip
        records = [
            UsageRecord(time=100.0, api_key="a", model="m1", prompt_tokens=3, completion_tokens=4, total_tokens=7, **base,
                        cached_tokens=2, reasoning_tokens=1, cost_usd=0.25, price_source="config"),
            UsageRecord(time=200.0, api_key="a", model="m2", prompt_tokens=1, completion_tokens=1, total_tokens=2, **base,
                        cost_usd=0.5, price_source="local"),
            UsageRecord(time=300.0, api_key=None, model="m1", prompt_tokens=5, completion_tokens=0, total_tokens=5,
                        **{**base, "status": 502, "estimated": True}),
            # A cache hit (no tokens, what it saved) and two shadow copies: counted apart, never in the sums above.
            UsageRecord(time=310.0, api_key="a", model="m1", prompt_tokens=0, completion_tokens=0, total_tokens=0,
                        **{**base, "provider": "cache"}, cost_usd=0.0, cache="hit", saved_tokens=7),
            UsageRecord(time=320.0, api_key="a", model="m2", prompt_tokens=3, completion_tokens=3, total_tokens=6, **base,
                        cost_usd=2.0, shadow_of="r", similarity=0.5),
            UsageRecord(time=330.0, api_key="a", model="m2", prompt_tokens=3, completion_tokens=3, total_tokens=6, **base,
                        cost_usd=1.0, shadow_of="r", similarity=0.75),
        ]  # fmt: skip
        ledger.append(records)
        everything = ledger.summarize(UsageQuery(group_by=()))
        assert everything == [{"requests": 4, "failed_requests": 1, "prompt_tokens": 9, "completion_tokens": 5,
                               "total_tokens": 14, "estimated_requests": 1, "cached_tokens": 2, "reasoning_tokens": 1,
                               "cost_usd": 0.75, "unpriced_requests": 1, "cache_hits": 1, "saved_tokens": 7,
                               "shadow_requests": 2, "shadow_cost_usd": 3.0, "shadow_scored": 2,
                               "shadow_similarity": 0.625}]  # fmt: skip
        assert type(everything[0]["cost_usd"]) is float and type(everything[0]["requests"]) is int
        assert type(everything[0]["shadow_cost_usd"]) is float
        by_key = ledger.summarize(UsageQuery(start_time=150, group_by=("api_key",)))
        assert [(row["api_key"], row["total_tokens"]) for row in by_key] == [("a", 2), (None, 5)]
        assert ledger.summarize(UsageQuery(api_key="a", model="m1"))[0]["total_tokens"] == 7
        assert ledger.spent_by_key() == {"a": 9}
    finally:
        ledger.close()


def test_the_sqlite_ledger_is_in_wal_mode(ledger_gateway: str, tmp_path: Path) -> None:
    httpx.post(f"{ledger_gateway}/v1/embeddings", json={"model": "embed-test", "input": "x"}, headers={"api-key": TEAM_KEY})
    usage(ledger_gateway)  # flushes
    with sqlite3.connect(tmp_path / "usage.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("SELECT api_key, endpoint FROM usage_records").fetchall() == [("team-a", "embeddings")]


def test_postgres_ledger_through_the_gateway(gateway_config: GatewayConfig, tmp_path: Path, postgres_url: str) -> None:
    server_yaml = ledger_yaml(tmp_path) + f"  database_url: {postgres_url}\n"
    config = keyed_config(gateway_config, server_yaml)
    with ServedApp(create_app(config)) as served:
        before = usage(served.url, group_by="").json()["totals"]["requests"]
        team = openai.OpenAI(base_url=f"{served.url}/v1", api_key=TEAM_KEY, max_retries=0)
        for _ in range(3):
            team.chat.completions.create(model="gpt-test", messages=HI)
        assert usage(served.url, group_by="").json()["totals"]["requests"] == before + 3
    assert not (tmp_path / "usage.sqlite3").exists()


# --- a real process: what a clean shutdown keeps, what a kill -9 can lose ---

FLUSH_INTERVAL = 0.5


def served_config(tmp_path: Path, upstream_url: str) -> Path:
    config = tmp_path / "providers.yaml"
    config.write_text(
        f"""
server: {{data_dir: ./data, ledger_flush_interval: {FLUSH_INTERVAL}}}
providers:
  fake: {{type: custom, base_url: "{upstream_url}/v1", api_key: "${{FAKE_KEY}}"}}
models:
  chat: {{deployments: [{{provider: fake, model: fake-model}}]}}
"""
    )
    return config


def recorded_ids(tmp_path: Path) -> set[str]:
    with sqlite3.connect(tmp_path / "data" / "usage.sqlite3") as db:
        return {row[0] for row in db.execute("SELECT request_id FROM usage_records")}


def send_requests(url: str, count: int) -> list[tuple[str, float]]:
    """Request ids with the time each answer arrived."""
    answered = []
    with httpx.Client(base_url=url) as http:
        for _ in range(count):
            response = http.post("/v1/chat/completions", json={"model": "chat", "messages": HI})
            assert response.status_code == 200
            answered.append((response.headers["x-request-id"], time.monotonic()))
    return answered


def test_a_clean_shutdown_loses_no_record(tmp_path: Path, fake_upstream: tuple[FakeOpenAI, ServedApp]) -> None:
    with GatewayProcess(served_config(tmp_path, fake_upstream[1].url), {"FAKE_KEY": PLANTED_KEY}) as gateway:
        answered = send_requests(gateway.url, 50)
        # uvicorn shuts down, then re-raises the signal, so the exit status is SIGTERM's.
        assert gateway.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in gateway.log
    assert recorded_ids(tmp_path) == {request_id for request_id, _ in answered}


def test_a_kill_9_loses_at_most_one_flush_interval(tmp_path: Path, fake_upstream: tuple[FakeOpenAI, ServedApp]) -> None:
    with GatewayProcess(served_config(tmp_path, fake_upstream[1].url), {"FAKE_KEY": PLANTED_KEY}) as gateway:
        answered = send_requests(gateway.url, 30)
        time.sleep(FLUSH_INTERVAL * 2.5)  # these are on disk by now...
        answered += send_requests(gateway.url, 30)  # ... and some of these may not be
        killed_at = time.monotonic()
        gateway.stop(signal.SIGKILL)
    recorded = recorded_ids(tmp_path)
    lost = [(request_id, at) for request_id, at in answered if request_id not in recorded]
    print(f"kill -9: {len(lost)} of {len(answered)} records lost, flush interval {FLUSH_INTERVAL}s")
    assert all(killed_at - at <= FLUSH_INTERVAL + 0.25 for _, at in lost), lost  # only the last interval's
    assert {request_id for request_id, _ in answered[:30]} <= recorded


def test_ledger_writes_run_off_the_event_loop(tmp_path: Path) -> None:
    """A store that blocks for a while does not hold up the loop the requests run on."""

    class SlowStore:
        description = "slow"

        def __init__(self) -> None:
            self.rows: list[UsageRecord] = []

        def append(self, records: list[UsageRecord]) -> None:
            time.sleep(0.3)
            self.rows += records

        def close(self) -> None:
            pass

    async def scenario() -> tuple[float, int]:
        store = SlowStore()
        writer = LedgerWriter(lambda: store, flush_interval=0.01)  # type: ignore[arg-type,return-value]
        await writer.start()
        writer.record(UsageRecord(1.0, "r", None, "embeddings", "m", None, None, 200, False, 1, 0, 1, False, 1.0))
        started = time.monotonic()
        ticks = 0
        while time.monotonic() - started < 0.2:  # the flush's sleep is on its thread meanwhile
            await asyncio.sleep(0.005)
            ticks += 1
        await writer.aclose()
        return ticks, len(store.rows)

    ticks, written = asyncio.run(scenario())
    assert ticks > 20 and written == 1


def test_an_unreachable_database_stops_serve_with_one_clear_line(tmp_path: Path) -> None:
    from tests.support.services import free_port

    url = f"postgresql://switchyard:s3cret-pw@127.0.0.1:{free_port()}/usage"
    config = tmp_path / "providers.yaml"
    config.write_text(f"server: {{database_url: '{url}'}}\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "cannot open the usage ledger at 127.0.0.1" in result.stderr
    assert "s3cret-pw" not in result.stderr and "Traceback" not in result.stderr


def test_a_client_that_leaves_is_recorded_as_499_with_what_its_stream_used(ledger_gateway: str) -> None:
    headers = {"Authorization": f"Bearer {TEAM_KEY}"}
    with httpx.Client(base_url=ledger_gateway, headers=headers) as http:
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/chat/completions", json={"model": "fake/slow-1.5", "messages": HI}, timeout=0.3)
        body = {"model": "fake/endless-stream", "messages": HI, "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            events = 0
            for line in response.iter_lines():
                events += line.startswith("data: ")
                if events == 3:
                    break
    time.sleep(0.5)  # the gateway notices, cancels, records
    rows = usage(ledger_gateway, group_by="model").json()["data"]
    by_model = {row["model"]: row for row in rows}
    assert by_model["fake/slow-1.5"]["failed_requests"] == 1 and by_model["fake/slow-1.5"]["total_tokens"] == 0
    assert by_model["fake/endless-stream"]["completion_tokens"] >= 3  # the events it got are charged


def test_left_requests_have_status_499(ledger_gateway: str, tmp_path: Path) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{ledger_gateway}/v1/chat/completions", json={"model": "fake/slow-1.5", "messages": HI},
                   headers={"api-key": TEAM_KEY}, timeout=0.3)  # fmt: skip
    time.sleep(0.5)
    usage(ledger_gateway)  # flushes
    with sqlite3.connect(tmp_path / "usage.sqlite3") as db:
        assert db.execute("SELECT status FROM usage_records").fetchall() == [(499,)]
