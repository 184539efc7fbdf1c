"""``GET /status`` in headless Chromium, and ``/status.json``: the figures ``/health/ready`` and ``/metrics`` give.

The gateway is served on a real port with a fake OpenAI upstream (one
model answering, one failing until its breaker opens, one failing over)
and the tiny random Llama as a local engine. Chromium opens the page with
the admin key as its Basic auth password, as an operator's browser would.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.config import GatewayConfig, parse_config
from gateway.telemetry.metrics import BREAKER_VALUE
from tests.conftest import PLANTED_KEY
from tests.gateway.telemetry.test_metrics import samples, value
from tests.providers.local.conftest import wait_ready
from tests.support.browser import chromium
from tests.support.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServedApp

ADMIN_KEY = "sk-admin-status-0123456789abcdef"
KEYS = {"alice": "sk-alice-status-0123456789abcdef", "bob": "sk-bob-status-0123456789abcdef"}
PER_BLOCK = 2 * 2 * 4 * 2 * 16 * 4  # k+v, layers, block, kv heads, head dim, float32
CONFIG = """
server:
  data_dir: "{data_dir}"
  usage_ledger: {ledger}
  ledger_flush_interval: 0.1
  status_page: {access}
  admin_keys: {admin_keys}
  api_keys:
    - {{name: alice, key: "{alice}"}}
    - {{name: bob, key: "{bob}"}}
router:
  retries: {{attempts: 1}}
  cooldown: {{failures: 2, duration: 600}}
providers:
  fake: {{type: custom, base_url: "{fake}/v1", api_key: "{planted}"}}
{engine}
models:
  chat:
    price: {{input_per_mtok: 1.0, output_per_mtok: 2.0}}
    deployments: [{{provider: fake, model: fake-model}}]
  broken: {{deployments: [{{provider: fake, model: status-500}}]}}
  backed-up:
    routing: ordered
    deployments: [{{provider: fake, model: status-503}}, {{provider: fake, model: fake-model}}]
{tiny}
"""
ENGINE = '  engine: {{type: local, model: "{model}", dtype: float32, kv_cache_bytes: {kv_bytes}, block_size: 4}}'
TINY = "  tiny: {deployments: [{provider: engine, model: tiny}]}"
HI = [{"role": "user", "content": "hello there"}]
# A client's direct model name that would run script if the page wrote it unescaped, as text or in an attribute.
HOSTILE = "fake/<script>window.pwned=1</script>\"'><img src=x onerror=\"window.pwned=2\">{{nonce}}"

# Every figure of the page's tables and chart: a row's data-* attributes, and [data-value, text] per cell.
READ_PAGE = """
function rows(selector, keys) {
  return Array.from(document.querySelectorAll(selector)).map(function (tr) {
    var row = {attrs: {}};
    keys.forEach(function (key) { row.attrs[key] = tr.getAttribute("data-" + key); });
    tr.querySelectorAll("td").forEach(function (td) { row[td.dataset.field] = [td.dataset.value, td.textContent]; });
    return row;
  });
}
return {
  readiness: document.getElementById("readiness").dataset.status,
  polls: Number(document.getElementById("polls").dataset.count),
  poll_note: document.getElementById("polls").textContent,
  deployments: rows("#deployments tbody tr[data-model]", ["model", "provider", "deployment"]),
  engines: rows("#engines tbody tr[data-provider]", ["provider"]),
  usage: Array.from(document.querySelectorAll("#usage-chart g[data-key]")).map(function (g) {
    return {key: g.dataset.key, requests: Number(g.dataset.requests), tokens: Number(g.dataset.totalTokens),
            cost: Number(g.dataset.costUsd), label: g.textContent};
  }),
  pwned: window.pwned === undefined ? null : window.pwned
};
"""


def config_for(
    fake_url: str, tmp: Path, access: str = "admin", admin: bool = True, model_dir: Path | None = None
) -> GatewayConfig:
    yaml = CONFIG.format(
        data_dir=tmp, ledger="true" if model_dir is not None else "false", access=access,
        admin_keys=f'["{ADMIN_KEY}"]' if admin else "[]", alice=KEYS["alice"], bob=KEYS["bob"],
        fake=fake_url, planted=PLANTED_KEY,
        engine=ENGINE.format(model=model_dir, kv_bytes=PER_BLOCK * 512) if model_dir is not None else "",
        tiny=TINY if model_dir is not None else "",
    )  # fmt: skip
    return parse_config(yaml, environ={})


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat(http: httpx.Client, key: str, model: str, **extra: Any) -> httpx.Response:
    return http.post("/v1/chat/completions", json={"model": model, "messages": HI, **extra}, headers=bearer(key))


@pytest.fixture()
def served(fake_upstream: tuple[FakeOpenAI, ServedApp], tmp_path: Path) -> Iterator[Any]:
    """``served(access=..., admin=...)``: a gateway without an engine or a ledger, on a real port."""
    stack: list[ServedApp] = []

    def serve(**options: Any) -> httpx.Client:
        config = config_for(fake_upstream[1].url, tmp_path, **options)
        app = ServedApp(create_app(config), server=config.server).__enter__()
        stack.append(app)
        return httpx.Client(base_url=app.url, timeout=10)

    yield serve
    for app in stack:
        app.__exit__(None, None, None)


def test_admin_keys_only_by_default(served: Any) -> None:
    http = served()
    for path in ("/status", "/status.json"):
        missing = http.get(path)
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
        assert missing.headers["www-authenticate"].startswith("Basic ")  # a browser asks its user for the key
        assert http.get(path, headers=bearer("sk-nobody-knows-this-one")).status_code == 401
        refused = http.get(path, headers=bearer(KEYS["alice"]))
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_key_required"
        assert http.get(path, headers=bearer(ADMIN_KEY)).status_code == 200
        assert http.get(path, auth=("anyone", ADMIN_KEY)).status_code == 200  # Basic auth, as a browser sends it
        assert http.get(path, auth=("anyone", KEYS["bob"])).status_code == 403
        assert http.get(path, headers={"Authorization": "Basic !!not-base64"}).status_code == 401


def test_admin_without_admin_keys_says_how_to_open_it(served: Any) -> None:
    answer = served(admin=False).get("/status", headers=bearer(KEYS["alice"]))
    assert answer.status_code == 403
    message = answer.json()["error"]["message"]
    assert "server.admin_keys" in message and "server.status_page: public" in message


def test_public_needs_no_key_and_off_is_not_there(served: Any) -> None:
    public = served(access="public")
    assert public.get("/status").status_code == 200
    assert public.get("/status.json").status_code == 200
    assert public.get("/status", headers={"Host": "evil.test"}).status_code == 421  # the Host check still holds
    off = served(access="off")
    for path in ("/status", "/status.json"):
        answer = off.get(path, headers=bearer(ADMIN_KEY))
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "unknown_url"


def test_the_json_and_the_page_have_the_same_figures_escaped(served: Any) -> None:
    http = served(access="public")
    assert chat(http, KEYS["alice"], "chat").status_code == 200
    assert chat(http, KEYS["alice"], HOSTILE).status_code == 200
    status = http.get("/status.json")
    assert status.headers["cache-control"] == "no-store"
    body = status.json()
    assert set(body) == {
        "status", "time", "window_s", "tokens_window_s", "deployments", "engines", "ledger", "usage", "usage_since"
    }  # fmt: skip
    assert (body["status"], body["window_s"], body["ledger"]) == ("ready", 300, "off")
    assert body["usage"] == [] and body["engines"] == []  # no ledger, no local engine here
    rows = {row["model"]: row for row in body["deployments"]}
    assert set(rows) == {"chat", "broken", "backed-up", HOSTILE}
    assert set(rows["chat"]) == {
        "model", "provider", "deployment", "state", "cooldown_remaining_s", "in_flight", "successes", "failures",
        "latency_ms", "last_error", "recent_successes", "recent_failures", "recent_error_rate", "recent_latency_ms",
        "recent_latency_max_ms",
    }  # fmt: skip
    chat_row = rows["chat"]
    assert (chat_row["state"], chat_row["recent_successes"], chat_row["recent_error_rate"]) == ("closed", 1, 0.0)
    assert chat_row["recent_latency_ms"] == chat_row["latency_ms"]  # one answer: its mean is the moving average
    assert rows[HOSTILE]["deployment"] == HOSTILE.removeprefix("fake/")

    page = http.get("/status")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'nonce-" in csp and "unsafe-inline" not in csp
    assert "<script>window.pwned" not in page.text and "<img src=x" not in page.text
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;&quot;&#x27;&gt;&lt;img" in page.text
    assert "{{" not in page.text.replace("{{nonce}}", "")  # the name's own marker stays as it was, nothing else


def test_the_page_in_chromium_shows_what_health_and_metrics_report(
    fake_upstream: tuple[FakeOpenAI, ServedApp], tiny_model_dir: Path, tmp_path: Path
) -> None:
    config = config_for(fake_upstream[1].url, tmp_path / "data", model_dir=tiny_model_dir)
    with ServedApp(create_app(config), server=config.server) as gateway, httpx.Client(
        base_url=gateway.url, timeout=60
    ) as http:
        wait_ready(gateway.url)
        alice, bob = KEYS["alice"], KEYS["bob"]
        assert [chat(http, alice, "chat").status_code for _ in range(2)] == [200, 200]
        assert [chat(http, alice, "broken").status_code for _ in range(3)][2] == 503  # the breaker opened after two
        assert chat(http, alice, "backed-up").status_code == 200  # the first deployment failed, the second answered
        tiny = chat(http, bob, "tiny", max_tokens=4, temperature=0)
        assert tiny.status_code == 200
        local_tokens = tiny.json()["usage"]["completion_tokens"]
        assert chat(http, bob, HOSTILE).status_code == 200
        held = {"model": "fake/endless-stream", "messages": HI, "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=held, headers=bearer(bob)) as stream:
            events = stream.iter_bytes()  # kept: a generator dropped would close the stream
            next(events)  # one deployment has a request in flight until this closes

            with chromium(["--window-size=1600,900"]) as browser:
                browser.get(f"http://status:{ADMIN_KEY}@127.0.0.1:{gateway.port}/status")
                shown = browser.execute_script(READ_PAGE)
                ready = http.get("/health/ready").json()
                metrics = samples(gateway.url)
                usage = http.get("/v1/usage", params={"group_by": "api_key", "start_time": time.time() - 86400},
                                 headers=bearer(ADMIN_KEY)).json()  # fmt: skip
                assert shown["polls"] == 0  # the server's first paint: the script polls after 3 s
                assert shown["readiness"] == ready["status"] == "ready"
                assert shown["pwned"] is None
                check_deployments(shown["deployments"], ready, metrics)
                check_engine(shown["engines"], metrics, local_tokens)
                check_usage(shown["usage"], usage, metrics)

                events.close()
                stream.close()
                assert chat(http, alice, "chat").status_code == 200
                updated = wait_for(browser, lambda page: cell(page, "chat", "successes") == "3", timeout=15)
                assert updated["polls"] >= 1 and updated["pwned"] is None  # the script's own redraw escapes too
                assert cell(updated, "fake/endless-stream", "in_flight") == "0"
                assert row_of(updated["deployments"], HOSTILE)["model"] == [HOSTILE, HOSTILE]
                for model in ("backed-up", "tiny", HOSTILE):  # unchanged: the script draws what the server drew
                    assert [r for r in updated["deployments"] if r["attrs"]["model"] == model] == [
                        r for r in shown["deployments"] if r["attrs"]["model"] == model
                    ]
                browser.save_screenshot(str(tmp_path / "status.png"))
    assert (tmp_path / "status.png").stat().st_size > 10_000


def check_deployments(shown: list[dict[str, Any]], ready: dict[str, Any], metrics: dict[Any, float]) -> None:
    """Each row against its deployment at /health/ready, and the public models' against /metrics."""
    listed = {(row["attrs"]["model"], row["attrs"]["provider"], row["attrs"]["deployment"]) for row in shown}
    reported = {(model, d["provider"], d["model"]) for model, states in ready["models"].items() for d in states}
    assert listed == reported
    for model, deployments in ready["models"].items():
        calls = 0
        for deployment in deployments:
            identity = {"model": model, "provider": deployment["provider"], "deployment": deployment["model"]}
            row = next(r for r in shown if r["attrs"] == identity)
            for field in ("state", "in_flight", "successes", "failures", "last_error"):
                assert same(row[field][0], deployment[field]), (model, field, row[field], deployment[field])
            assert float(row["cooldown_remaining_s"][0]) == pytest.approx(deployment["cooldown_remaining_s"], abs=5)
            recent = int(row["recent_successes"][0]) + int(row["recent_failures"][0])
            assert recent == deployment["successes"] + deployment["failures"]  # all of them within the window
            calls += recent
            if model in ("tiny", "backed-up") and deployment["successes"] == 1:
                # One timed answer: the window's mean is the moving average /health/ready shows.
                assert same(row["recent_latency_ms"][0], deployment["latency_ms"]), model
            if model in ("chat", "broken", "backed-up", "tiny"):
                labels = {"model": model, "provider": deployment["provider"], "deployment": deployment["model"]}
                assert value(metrics, "switchyard_deployment_up", **labels) == BREAKER_VALUE[row["state"][0]]
                assert value(metrics, "switchyard_deployment_in_flight", **labels) == int(row["in_flight"][0])
        if model in ("chat", "broken", "backed-up", "tiny"):
            assert value(metrics, "switchyard_upstream_attempts_total", model=model) == calls, model
    assert row_of(shown, "broken")["state"][0] == "open"
    assert row_of(shown, "broken")["recent_error_rate"] == ["1", "100.0%"]
    first, second = (row for row in shown if row["attrs"]["model"] == "backed-up")
    assert (first["recent_error_rate"][0], second["recent_error_rate"][0]) == ("1", "0")
    assert int(row_of(shown, "fake/endless-stream")["in_flight"][0]) == 1
    hostile = row_of(shown, HOSTILE)
    assert hostile["model"] == [HOSTILE, HOSTILE] and hostile["deployment"] == [HOSTILE[5:], HOSTILE[5:]]


def check_engine(shown: list[dict[str, Any]], metrics: dict[Any, float], local_tokens: int) -> None:
    [engine] = shown
    assert engine["attrs"]["provider"] == "engine" and engine["state"][0] == "ready"
    for field, metric in (("running", "switchyard_engine_requests_running"),
                          ("waiting", "switchyard_engine_requests_waiting"),
                          ("kv_cache_usage", "switchyard_engine_kv_cache_usage_ratio")):  # fmt: skip
        assert float(engine[field][0]) == pytest.approx(value(metrics, metric, provider="engine"), abs=1e-4), field
    assert float(engine["tokens_per_s"][0]) == round(local_tokens / 60, 2)


def check_usage(shown: list[dict[str, Any]], usage: dict[str, Any], metrics: dict[Any, float]) -> None:
    """The chart's bars against /v1/usage (the same ledger query) and the cost against /metrics."""
    by_key = {row["key"]: row for row in shown}
    assert set(by_key) == {"alice", "bob"}
    for row in usage["data"]:
        bar = by_key[row["api_key"]]
        assert (bar["requests"], bar["tokens"]) == (row["requests"], row["total_tokens"])
        assert bar["cost"] == pytest.approx(row["cost_usd"])
        assert f"{row['total_tokens']:,} tokens" in bar["label"]
    charged = sum(usd for (name, labels), usd in metrics.items()
                  if name == "switchyard_cost_usd_total" and ("key", "alice") in labels)  # fmt: skip
    assert by_key["alice"]["cost"] == pytest.approx(charged) and charged > 0
    assert by_key["alice"]["requests"] == 6 and by_key["bob"]["requests"] == 2  # the held stream is not finished


def same(shown: str, expected: object) -> bool:
    """A data-value against a JSON value: text as it is, numbers as numbers, null as empty."""
    if expected is None or isinstance(expected, str):
        return shown == ("" if expected is None else expected)
    return float(shown) == expected


def row_of(rows: list[dict[str, Any]], model: str) -> dict[str, Any]:
    return next(row for row in rows if row["attrs"]["model"] == model)


def cell(page: dict[str, Any], model: str, field: str) -> str:
    return row_of(page["deployments"], model)[field][0]


def wait_for(browser: Any, ready: Any, timeout: float) -> dict[str, Any]:
    """The page's figures once ``ready(figures)`` holds (the page polls every few seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        page = browser.execute_script(READ_PAGE)
        if ready(page):
            return page
        if time.monotonic() > deadline:
            raise AssertionError(f"the page did not update: {page}")
        time.sleep(0.2)
