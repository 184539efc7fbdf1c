"""A 200-line batch survives a restart of ``switchyard serve`` half-way: every line is answered exactly once.

The gateway runs as a real process (tests/support/processes.py) against
``FlakyUpstream`` (some calls 503, some 429 with Retry-After); it is stopped
gracefully (SIGTERM) a fifth of the way, killed (SIGKILL) some lines later, and
each time started again on the same data directory. Stopped gracefully, no
line reaches the upstream twice; killed, a line in flight may be sent again,
but the output still holds each line once.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import orjson
import pytest

from tests.gateway.batches.flaky import FlakyUpstream, chat_lines
from tests.support.processes import GatewayProcess
from tests.support.servers import ServedApp

LINES = 200
CONFIG = """
server: {{data_dir: "{data}", batch_concurrency: 4}}
router:
  retries: {{attempts: 5, backoff_initial: 0.01, backoff_max: 0.02}}
  cooldown: {{failures: 100000}}
providers:
  flaky: {{type: custom, base_url: "{flaky}/v1", api_key: sk-flaky}}
models:
  gpt-test: {{deployments: [{{provider: flaky, model: flaky-model}}]}}
"""


@pytest.fixture()
def flaky() -> Iterator[tuple[FlakyUpstream, ServedApp]]:
    upstream = FlakyUpstream(delay=0.02)
    with ServedApp(upstream.app) as served:
        yield upstream, served


def answered_so_far(client: openai.OpenAI, batch_id: str, at_least: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = client.batches.retrieve(batch_id).request_counts
        if counts is not None and counts.completed + counts.failed >= at_least:
            return counts.completed + counts.failed
        time.sleep(0.01)
    raise AssertionError(f"{at_least} lines were not answered within {timeout} s")


def test_a_restart_half_way_answers_every_line_exactly_once(tmp_path: Path, flaky: tuple[FlakyUpstream, ServedApp]) -> None:
    """Stopped with SIGTERM a fifth of the way, then killed with SIGKILL 30 lines later, then left to finish."""
    upstream, served = flaky
    config = tmp_path / "providers.yaml"
    config.write_text(CONFIG.format(data=tmp_path / "data", flaky=served.url))
    with GatewayProcess(config, {}) as first:
        client = openai.OpenAI(base_url=f"{first.url}/v1", api_key="none", max_retries=0)
        source = client.files.create(file=("requests.jsonl", chat_lines(LINES)), purpose="batch")
        batch = client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
        answered_so_far(client, batch.id, LINES // 5)
        code = first.stop(signal.SIGTERM)
    assert code == -signal.SIGTERM and "Application shutdown complete." in first.log, first.log  # graceful
    with GatewayProcess(config, {}) as second:
        client = openai.OpenAI(base_url=f"{second.url}/v1", api_key="none", max_retries=0)
        resumed = client.batches.retrieve(batch.id)
        kept = resumed.request_counts.completed  # type: ignore[union-attr]
        assert resumed.status == "in_progress" and kept < LINES - 60, "too late a stop: nothing left to resume"
        answered_so_far(client, batch.id, kept + 30)
        # Drained at the SIGTERM: the lines in flight were answered and kept, none is sent again after it.
        assert max(upstream.answered.values()) == 1, [said for said, n in upstream.answered.items() if n > 1]
        sent_before_the_kill = sum(upstream.answered.values())
        assert second.stop(signal.SIGKILL) == -signal.SIGKILL
    with GatewayProcess(config, {}) as third:
        client = openai.OpenAI(base_url=f"{third.url}/v1", api_key="none", max_retries=0)
        assert client.batches.retrieve(batch.id).request_counts.completed < LINES  # type: ignore[union-attr]
        deadline = time.monotonic() + 60
        while (done := client.batches.retrieve(batch.id)).status != "completed" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert done.status == "completed", third.log
        assert done.request_counts.completed == LINES and done.request_counts.failed == 0  # type: ignore[union-attr]
        output = [orjson.loads(line) for line in client.files.content(done.output_file_id).read().splitlines()]  # type: ignore[arg-type]
    assert len(output) == LINES
    assert sorted(line["custom_id"] for line in output) == sorted(f"line-{i}" for i in range(LINES))
    for line in output:
        number = line["custom_id"].removeprefix("line-")
        assert line["response"]["body"]["choices"][0]["message"]["content"] == f"You said: line {number}"
    assert upstream.failed > 0  # the router retried some lines' calls
    assert set(upstream.answered) == {f"line {i}" for i in range(LINES)}
    # Killed: at most the lines in flight (batch_concurrency) were answered upstream before the kill and again after.
    assert sum(upstream.answered.values()) - LINES <= 4
    assert sent_before_the_kill >= kept + 30
