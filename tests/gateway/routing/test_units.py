"""The router's pieces on their own: breaker, balancer, fallback chains, config checks."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gateway.config import ConfigError, CooldownConfig, GatewayConfig, parse_config
from gateway.errors import InvalidRequest
from gateway.routing.balancer import DeploymentState, order
from gateway.routing.breaker import CircuitBreaker
from gateway.routing.deployment import Deployment
from gateway.routing.fallbacks import FallbackPolicy, without_routing_fields
from providers.errors import ContextWindowExceeded, UpstreamServerError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_n_failures_in_the_window_and_one_probe_decides() -> None:
    clock = Clock()
    breaker = CircuitBreaker(CooldownConfig(failures=3, window=10, duration=5), clock)
    breaker.record_failure()
    clock.now += 11  # outside the window: forgotten
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed" and breaker.try_acquire()
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.try_acquire()
    assert breaker.seconds_until_probe() == pytest.approx(5)
    clock.now += 5
    assert breaker.state == "half_open"
    assert breaker.try_acquire()  # the probe
    assert not breaker.try_acquire()  # everyone else waits for it
    breaker.record_failure()  # the probe failed: open again, for a full duration
    assert breaker.state == "open" and breaker.seconds_until_probe() == pytest.approx(5)
    clock.now += 5
    assert breaker.try_acquire()
    breaker.release()  # the probe's client left: no verdict, the next request probes
    assert breaker.try_acquire()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.try_acquire() and breaker.try_acquire()


def states(*weights: float) -> list[DeploymentState]:
    breaker = CircuitBreaker(CooldownConfig())
    return [DeploymentState(Deployment(f"p{i}", "m", None), w, breaker) for i, w in enumerate(weights)]  # type: ignore[arg-type]


def test_weighted_order_follows_the_weights() -> None:
    rng = random.Random(7)
    pool = states(3, 1)
    firsts = Counter(order(pool, "weighted", rng)[0].deployment.provider_name for _ in range(4000))
    assert firsts["p0"] / 4000 == pytest.approx(0.75, abs=0.03)
    assert sorted(s.deployment.provider_name for s in order(pool, "weighted", rng)) == ["p0", "p1"]


def test_ordered_keeps_the_configured_order() -> None:
    pool = states(1, 5, 1)
    assert [order(pool, "ordered", random.Random(i))[0] for i in range(20)] == [pool[0]] * 20


def test_least_busy_and_lowest_latency() -> None:
    rng = random.Random(7)
    pool = states(1, 1, 1)
    pool[0].in_flight, pool[1].in_flight, pool[2].in_flight = 4, 1, 2
    assert [s.deployment.provider_name for s in order(pool, "least_busy", rng)] == ["p1", "p2", "p0"]
    for state, seconds in zip(pool, (0.3, 0.1)):
        state.observe_latency(seconds)
    assert order(pool, "lowest_latency", rng)[0] is pool[2]  # never measured: tried first
    pool[2].observe_latency(0.2)
    assert [s.deployment.provider_name for s in order(pool, "lowest_latency", rng)] == ["p1", "p2", "p0"]
    pool[1].observe_latency(1.1)  # a moving average: one slow answer moves it by 20% of the gap
    assert pool[1].latency == pytest.approx(0.1 + 0.2 * 1.0)


MODELS = "models:\n" + "".join(f"  {m}: {{deployments: [{{provider: p, model: {m}}}]}}\n" for m in "abcd")


def config(extra: str) -> GatewayConfig:
    return parse_config("providers: {p: {type: custom, base_url: 'http://x/v1'}}\n" + MODELS + extra, environ={})


def test_chains_are_followed_through_in_order() -> None:
    policy = FallbackPolicy(config("fallbacks: {a: [b, c], b: [d]}\ncontext_window_fallbacks: {a: [d]}\n"))
    plan = policy.plan("a", {})
    assert plan.general == ("b", "d", "c")
    assert policy.after(ContextWindowExceeded("too long"), "a", plan) == ("d",)
    assert policy.after(UpstreamServerError("boom"), "a", plan) is None


def test_request_overrides_are_read_and_kept_from_the_upstream() -> None:
    policy = FallbackPolicy(config("default_fallbacks: [c]\n"))
    payload = {"model": "a", "fallbacks": ["d", "b", "d"]}
    assert policy.plan("a", payload).general == ("d", "b")
    assert payload == {"model": "a", "fallbacks": ["d", "b", "d"]}  # the client's body is not changed
    assert without_routing_fields(payload) == {"model": "a"}  # ... what the upstream gets
    assert policy.plan("a", {}).general == ("c",)
    assert policy.plan("c", {}).general == ()  # the default chain never points a model at itself
    assert not policy.plan("a", {"disable_fallbacks": True}).enabled
    with pytest.raises(InvalidRequest) as caught:
        policy.plan("a", {"fallbacks": "b"})
    assert caught.value.param == "fallbacks"


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("fallbacks: {a: [b], b: [c], c: [a]}\n", "fallbacks: the chains loop: a -> b -> c -> a"),
        ("fallbacks: {a: [a]}\n", "fallbacks: the chains loop: a -> a"),
        ("context_window_fallbacks: {a: [zz]}\n", "context_window_fallbacks.a[0]: 'zz' is not a model"),
        ("content_policy_fallbacks: {zz: [a]}\n", "content_policy_fallbacks.zz: not a model"),
        ("default_fallbacks: [b, b]\n", "default_fallbacks: a model is listed twice"),
        ("router: {routing: fastest}\n", "router.routing"),
        ("router: {retries: {attempts: 0}}\n", "router.retries.attempts"),
    ],
)
def test_bad_policies_fail_at_load_naming_the_field(extra: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config(extra)
    assert any(problem in line for line in caught.value.problems), caught.value.problems


async def test_tokens_needed_follows_openais_chat_accounting() -> None:
    from providers import Endpoint
    from providers.tokens import count_text, tokens_needed

    assert count_text("hello world") == 2  # cl100k_base
    chat = {"messages": [{"role": "user", "content": "hello world"}, {"role": "user", "name": "bob", "content": [{"type": "text", "text": "hi"}]}]}
    # 3 priming + (3 + "user" + 2) + (3 + "user" + "hi" + 1 + "bob")
    assert await tokens_needed(Endpoint.CHAT, chat) == 3 + (3 + 1 + 2) + (3 + 1 + 1 + 1 + 1)
    assert await tokens_needed(Endpoint.CHAT, {**chat, "max_tokens": 10}) == 16 + 10
    assert await tokens_needed(Endpoint.COMPLETIONS, {"prompt": ["hello world", "hi"], "max_tokens": 5}) == 2 + 5
    assert await tokens_needed(Endpoint.COMPLETIONS, {"prompt": [1, 2, 3]}) == 3
    long_chat = {"messages": [{"role": "user", "content": "hello world " * 1000}]}  # counted beside the loop
    assert await tokens_needed(Endpoint.CHAT, long_chat) == 3 + 3 + 1 + count_text("hello world " * 1000)


def test_direct_provider_model_names_are_kept_in_a_bounded_table() -> None:
    from gateway.routing import table as table_module
    from gateway.routing.table import ModelTable

    table = ModelTable(config(""), {"p": object()})  # type: ignore[dict-item]
    for index in range(table_module.MAX_DIRECT_MODELS + 10):
        table.deployments_for(f"p/model-{index}")
    states = table.deployment_states()
    assert len(states) == 4 + table_module.MAX_DIRECT_MODELS  # a..d, then the newest direct names
    assert "p/model-0" not in states and f"p/model-{table_module.MAX_DIRECT_MODELS + 9}" in states
