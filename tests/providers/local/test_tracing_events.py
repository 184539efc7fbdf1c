"""The local engine's stages in a trace: queue, prefill and decode as events of the request's span."""

from __future__ import annotations

from pathlib import Path

import openai

from gateway.app import create_app
from gateway.config import parse_config
from tests.providers.local.conftest import wait_ready
from tests.support.otlp import OTLPReceiver, ReceivedSpan
from tests.support.servers import ServedApp

STAGES = ["switchyard.engine.queue", "switchyard.engine.prefill", "switchyard.engine.decode"]


def engine_yaml(model: Path, receiver: OTLPReceiver) -> str:
    per_block = 2 * 2 * 4 * 2 * 16 * 4  # k+v, layers, block, kv heads, head dim, float32
    return f"""
server: {{usage_ledger: false, otel: {{endpoint: "{receiver.url}"}}}}
providers:
  engine: {{type: local, model: "{model}", dtype: float32, kv_cache_bytes: {per_block * 512}, block_size: 4}}
models:
  tiny: {{deployments: [{{provider: engine, model: tiny}}]}}
"""


def check_stages(request: ReceivedSpan, completion_tokens: int) -> None:
    assert [event.name for event in request.events] == STAGES
    queue, prefill, decode = request.events
    assert request.start_ns <= queue.time_ns <= prefill.time_ns <= decode.time_ns <= request.end_ns
    # Each stage starts where the one before it ended.
    for stage, after in ((queue, prefill), (prefill, decode)):
        assert abs(stage.time_ns + stage.attributes["duration_s"] * 1e9 - after.time_ns) < 1e6
    assert prefill.attributes["duration_s"] > 0
    assert (decode.attributes["duration_s"] > 0) == (completion_tokens > 1)
    assert decode.time_ns + decode.attributes["duration_s"] * 1e9 <= request.end_ns


def test_the_engines_stages_are_events_of_the_request_span(tiny_model_dir: Path) -> None:
    with OTLPReceiver() as receiver:
        with ServedApp(create_app(parse_config(engine_yaml(tiny_model_dir, receiver), environ={}))) as served:
            wait_ready(served.url)
            client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="none", max_retries=0, timeout=60)
            whole = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8, temperature=0
            )
            stream = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8, temperature=0, stream=True,
                stream_options={"include_usage": True},
            )  # fmt: skip
            streamed = [chunk.usage for chunk in stream if chunk.usage is not None][-1]
    spans = receiver.wait_for(lambda spans: len(spans) >= 4)
    requests = sorted((span for span in spans if span.kind == "SERVER"), key=lambda span: span.start_ns)
    attempts = [span for span in spans if span.kind != "SERVER"]
    assert [span.kind for span in attempts] == ["INTERNAL", "INTERNAL"]  # a model in this process
    assert {span.attributes["gen_ai.provider.name"] for span in attempts} == {"local"}
    assert whole.usage is not None
    check_stages(requests[0], whole.usage.completion_tokens)
    check_stages(requests[1], streamed.completion_tokens)
    assert requests[1].attributes["gen_ai.usage.output_tokens"] == streamed.completion_tokens
