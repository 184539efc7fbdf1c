"""``switchyard`` as a user runs it: a real process, its output, its exit codes."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from gateway.ledger import UsageRecord
from gateway.ledger.sqlite_store import SqliteStore
from gateway.process.cli import main
from tests.conftest import PLANTED_KEY
from tests.support.fakes.openai_upstream import FakeOpenAI
from tests.support.processes import GatewayProcess
from tests.support.servers import ServedApp


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_check_config_accepts_the_example() -> None:
    result = run_cli("check-config", str(Path(__file__).parents[3] / "config.example.yaml"))
    assert result.returncode == 0, result.stderr
    assert "gpt-4o-mini -> openai/gpt-4o-mini" in result.stdout
    assert "not priced (cost recorded as unknown): llama-3.1-8b -> my-vllm/meta-llama/Llama-3.1-8B-Instruct\n" in result.stdout


def test_check_config_lists_the_models_no_price_covers(tmp_path: Path) -> None:
    path = tmp_path / "providers.yaml"
    path.write_text(
        """
providers:
  openai: {type: openai, api_key: x}
  my-vllm: {type: custom, base_url: "http://127.0.0.1:8001/v1"}
  local: {type: local}
models:
  gpt-4o: {deployments: [{provider: openai, model: gpt-4o}]}
  llama:
    deployments: [{provider: my-vllm, model: llama-3.1-8b}, {provider: openai, model: no-such-model}]
  private:
    price: {input_per_mtok: 0.4, output_per_mtok: 1.6}
    deployments: [{provider: my-vllm, model: llama-3.1-8b}]
  smollm2: {deployments: [{provider: local, model: SmolLM2-135M-Instruct}]}
"""
    )
    result = run_cli("check-config", str(path))
    assert result.returncode == 0, result.stderr
    unpriced = [line for line in result.stdout.splitlines() if line.startswith("not priced")]
    assert unpriced == ["not priced (cost recorded as unknown): llama -> my-vllm/llama-3.1-8b, llama -> openai/no-such-model"]


def test_check_config_names_the_field_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("providers:\n  x: {type: nope, base_url: 'http://a'}\nserver: {port: many}\n")
    result = run_cli("check-config", str(path))
    assert result.returncode == 1
    assert "bad.yaml" in result.stderr
    assert "providers.x.type" in result.stderr and "server.port" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_takes_a_config_or_a_model_not_both() -> None:
    result = run_cli("serve", "--config", "x.yaml", "--model-path", "m", env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "--config or --model-path" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("variables", "named"),
    [({"SWITCHYARD_PORT": "70000"}, "port: Input should be less than or equal to 65535"),
     ({"SWITCHYARD_PORT": "eighty"}, "SWITCHYARD_PORT: Input should be a valid integer"),
     ({"SWITCHYARD_LOG_LEVEL": "loud"}, "log_level: String should match pattern")],
)  # fmt: skip
def test_serve_settings_from_the_environment_are_validated_like_the_file(
    tmp_path: Path, variables: dict[str, str], named: str
) -> None:
    config = tmp_path / "providers.yaml"
    config.write_text("providers:\n  x: {type: custom, base_url: 'http://127.0.0.1:9/v1'}\n")
    result = run_cli("serve", "--config", str(config), env={"PATH": "/usr/bin:/bin", **variables})
    assert result.returncode == 1, result.stderr
    assert named in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(params=["text", "json"])
def served_process(
    request: pytest.FixtureRequest, tmp_path: Path, fake_upstream: tuple[FakeOpenAI, ServedApp]
) -> Iterator[tuple[str, list[str]]]:
    config = tmp_path / "providers.yaml"
    config.write_text(
        f"""
server: {{log_format: {request.param}}}
providers:
  fake: {{type: custom, base_url: "{fake_upstream[1].url}/v1", api_key: "${{FAKE_KEY}}"}}
  wrong: {{type: custom, base_url: "{fake_upstream[1].url}/v1", api_key: "{PLANTED_KEY[::-1]}"}}
  dead: {{type: custom, base_url: "http://127.0.0.1:9/v1", api_key: "${{FAKE_KEY}}"}}
models:
  chat: {{deployments: [{{provider: fake, model: fake-model}}]}}
"""
    )
    with GatewayProcess(config, {"FAKE_KEY": PLANTED_KEY}, "--log-level", "debug") as gateway:
        yield gateway.url, gateway.output


def test_no_provider_key_in_any_response_or_log_line(served_process: tuple[str, list[str]]) -> None:
    url, output = served_process
    bodies = []
    with httpx.Client(base_url=url) as http:
        for model in ("chat", "wrong/fake-model", "dead/x", "fake/status-500", "fake/plain-400", "nope"):
            for stream in (False, True):
                body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
                response = http.post("/v1/chat/completions", json=body)
                bodies.append(response.text + str(response.headers))
        bodies.append(http.get("/health/ready").text)
        bodies.append(http.get("/openapi.json").text)
    time.sleep(0.2)
    log = "".join(output)
    assert "Incorrect API key provided: [redacted]" in "".join(bodies)
    for secret in (PLANTED_KEY, PLANTED_KEY[::-1]):
        assert secret not in log
        assert all(secret not in body for body in bodies)
    assert "dead" in log  # the unreachable provider was logged, without its key


def test_log_lines_carry_the_request_id(served_process: tuple[str, list[str]]) -> None:
    url, output = served_process
    response = httpx.post(f"{url}/v1/chat/completions", json={"model": "dead/x", "messages": [{"role": "user", "content": "hi"}]})
    request_id = response.headers["x-request-id"]
    time.sleep(0.2)
    about_dead = [line for line in "".join(output).splitlines() if "provider dead" in line]
    assert about_dead
    for line in about_dead:
        if line.startswith("{"):  # log_format: json: one object per line
            record = json.loads(line)
            assert record["request_id"] == request_id and record["level"] == "WARNING"
        else:
            assert f"[{request_id}]" in line


def test_usage_export_writes_the_ledger_with_costs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = SqliteStore(tmp_path / "usage.sqlite3")
    day = 1_764_547_200.0  # 2025-12-01T00:00:00Z
    store.append([
        UsageRecord(day - 1, "before", "team", "chat/completions", "m", "p", "d", 200, False, 9, 1, 10, False, 1.0),
        UsageRecord(day + 60, "priced", "team", "chat/completions", "m", "p", "d", 200, False, 1000, 10, 1010, False,
                    1.0, 200, 0, 4, 0.0000475, "config"),
        UsageRecord(day + 120, "unknown", None, "messages", "m", "p", "d", 200, True, 5, 5, 10, True, 2.0),
    ])  # fmt: skip
    store.close()
    config = tmp_path / "providers.yaml"
    config.write_text(f"server: {{data_dir: {tmp_path}}}\nproviders: {{}}\nmodels: {{}}\n")
    assert main(["usage", "export", "--config", str(config), "--since", "2025-12-01"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [row["request_id"] for row in rows] == ["priced", "unknown"]
    assert rows[0]["time_utc"] == "2025-12-01T00:01:00+00:00"
    assert (rows[0]["cost_usd"], rows[0]["price_source"], rows[0]["cached_tokens"]) == ("0.0000475000", "config", "200")
    assert rows[1]["cost_usd"] == "" and rows[1]["api_key"] == ""  # unknown stays unknown, not 0
    assert main(["usage", "export", "--config", str(config), "--until", str(day), "--format", "jsonl"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert orjson.loads(line)["request_id"] == "before" and orjson.loads(line)["cost_usd"] is None
    config.write_text(f"server: {{data_dir: {tmp_path}, usage_ledger: false}}\nproviders: {{}}\nmodels: {{}}\n")
    assert main(["usage", "export", "--config", str(config)]) == 1
