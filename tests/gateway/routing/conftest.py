"""A gateway in front of two fault-injecting upstreams, with waits short enough for tests."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import openai
import pytest
import yaml

from gateway.app import create_app
from gateway.config import parse_config
from tests.support.fakes.faulty import FaultyUpstream
from tests.support.servers import ServedApp

BASE_CONFIG: dict[str, Any] = {
    "router": {
        "timeout": 10,
        "stream_first_event_timeout": 2,
        "stream_stall_timeout": 2,
        "retries": {"attempts": 3, "backoff_initial": 0.01, "backoff_max": 0.02, "retry_after_max": 1},
        "cooldown": {"failures": 100, "window": 60, "duration": 0.2},
    },
    "providers": {
        "a": {"type": "custom", "base_url": "${A_URL}"},
        "b": {"type": "custom", "base_url": "${B_URL}"},
    },
    "models": {
        "alpha": {"deployments": [{"provider": "a", "model": "alpha-up"}]},
        "beta": {"deployments": [{"provider": "b", "model": "beta-up"}]},
        "big": {"deployments": [{"provider": "b", "model": "big-up"}]},
        "safe": {"deployments": [{"provider": "b", "model": "safe-up"}]},
    },
    "fallbacks": {"alpha": ["beta"]},
    "context_window_fallbacks": {"alpha": ["big"]},
    "content_policy_fallbacks": {"alpha": ["safe"]},
}

Gateway = Callable[..., AbstractContextManager[openai.OpenAI]]


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[FaultyUpstream, FaultyUpstream]]:
    with FaultyUpstream("a") as a, FaultyUpstream("b") as b:
        yield a, b


@pytest.fixture()
def a(upstreams: tuple[FaultyUpstream, FaultyUpstream]) -> FaultyUpstream:
    upstreams[0].reset_log()
    return upstreams[0]


@pytest.fixture()
def b(upstreams: tuple[FaultyUpstream, FaultyUpstream]) -> FaultyUpstream:
    upstreams[1].reset_log()
    return upstreams[1]


@pytest.fixture()
def gateway(a: FaultyUpstream, b: FaultyUpstream) -> Gateway:
    """``with gateway(router={...}) as client:`` -- a fresh gateway (fresh breakers) over the base config."""

    @contextmanager
    def serve(**overrides: Any) -> Iterator[openai.OpenAI]:
        config = merged(BASE_CONFIG, overrides)
        parsed = parse_config(yaml.safe_dump(config), environ={"A_URL": a.url, "B_URL": b.url})
        with ServedApp(create_app(parsed)) as served:
            yield openai.OpenAI(base_url=f"{served.url}/v1", api_key="client-key", max_retries=0, timeout=30)

    return serve


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in, mappings key by key; a None value removes the key."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


HI = [{"role": "user", "content": "hi"}]
