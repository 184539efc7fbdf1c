"""/metrics: what the relay counted, in Prometheus' text format, with labels clients cannot inflate."""

from __future__ import annotations

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PLANTED_KEY
from tests.support.servers import ServedApp

HI = [{"role": "user", "content": "hi"}]


def samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{url}/metrics").text
    assert PLANTED_KEY not in text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(table: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return table.get((name, frozenset(labels.items())), 0.0)


def test_requests_latency_first_token_and_deployments(gateway: ServedApp, client: openai.OpenAI) -> None:
    before = samples(gateway.url)
    raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=HI)
    assert float(raw.headers["x-process-time"]) > 0
    for _ in client.chat.completions.create(model="gpt-test", messages=HI, stream=True):
        pass
    client.chat.completions.create(model="fake/made-up-name-1", messages=HI)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=HI)
    after = samples(gateway.url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"endpoint": "chat/completions", "model": "gpt-test", "provider": "fake", "status": "200"}
    assert delta("switchyard_requests_total", **ok) == 2
    assert delta("switchyard_requests_total", **{**ok, "model": "fake/*"}) == 1  # a client's made-up name is not a label
    assert delta("switchyard_requests_total", endpoint="chat/completions", model="unknown", provider="", status="404") == 1
    assert delta("switchyard_request_duration_seconds_count", endpoint="chat/completions", model="gpt-test") == 2
    assert delta("switchyard_time_to_first_token_seconds_count", model="gpt-test") == 1
    assert delta("switchyard_upstream_attempts_total", model="gpt-test") == 2
    assert value(after, "switchyard_deployment_up", model="gpt-test", provider="fake", deployment="fake-model") == 1.0
    assert not any("made-up-name" in str(labels) for _, labels in after)


def test_fallbacks_and_attempts_are_counted(gateway: ServedApp, client: openai.OpenAI) -> None:
    before = samples(gateway.url)
    client.chat.completions.create(model="backed-up", messages=HI)  # its first deployment is unreachable
    after = samples(gateway.url)
    attempts = value(after, "switchyard_upstream_attempts_total", model="backed-up") - value(before, "switchyard_upstream_attempts_total", model="backed-up")
    assert attempts == 2
