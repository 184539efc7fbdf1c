"""POST /admin/reload and SIGHUP: a new providers.yaml swapped in atomically, a bad one refused, requests in flight kept.

The gateway is served by uvicorn on a real port in front of two loopback
upstreams that answer with their own names, so where each request went
is in its answer.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from gateway.app import create_app
from gateway.config import load_config
from gateway.reload import ReloadableApp
from tests.support.fakes.faulty import Fault, FaultyUpstream
from tests.support.processes import GatewayProcess
from tests.support.servers import ServedApp

ADMIN = "sk-admin-reload-test-0123456789"
CLIENT = "sk-client-reload-test-0123456789"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[FaultyUpstream, FaultyUpstream]]:
    with FaultyUpstream("a") as a, FaultyUpstream("b") as b:
        yield a, b


def config_text(
    upstreams: tuple[FaultyUpstream, FaultyUpstream],
    models: dict[str, str],
    **server: Any,
) -> str:
    """A config whose ``models`` maps each name to provider a or b."""
    a, b = upstreams
    return yaml.safe_dump({
        "server": {"admin_keys": [ADMIN], "api_keys": [{"key": CLIENT, "name": "client"}], **server},
        "router": {"retries": {"attempts": 1}},
        "providers": {"a": {"type": "custom", "base_url": f"{a.url}/v1"},
                      "b": {"type": "custom", "base_url": f"{b.url}/v1"}},
        "models": {name: {"deployments": [{"provider": provider, "model": f"{name}-up"}]}
                   for name, provider in models.items()},
    })  # fmt: skip


class Served:
    def __init__(self, app: ReloadableApp, url: str, path: Path) -> None:
        self.app, self.url, self.path = app, url, path
        self.client = openai.OpenAI(base_url=f"{url}/v1", api_key=CLIENT, max_retries=0, timeout=30)

    def reload(self, key: str | None = ADMIN) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.post(f"{self.url}/admin/reload", headers=headers, timeout=60)

    def answer(self, model: str) -> str:
        reply = self.client.chat.completions.create(model=model, messages=HI)  # type: ignore[arg-type]
        return reply.choices[0].message.content or ""


@pytest.fixture()
def served(tmp_path: Path, upstreams: tuple[FaultyUpstream, FaultyUpstream]) -> Iterator[Served]:
    path = tmp_path / "providers.yaml"
    path.write_text(config_text(upstreams, {"m1": "a"}))
    app = create_app(load_config(path), reload_from=lambda: load_config(path))
    with ServedApp(app) as server:
        yield Served(app, server.url, path)


def test_a_new_file_is_served_after_a_reload(served: Served, upstreams: tuple[FaultyUpstream, FaultyUpstream]) -> None:
    assert served.answer("m1") == "a"
    served.path.write_text(config_text(upstreams, {"m1": "b", "m2": "a"}))
    answer = served.reload()
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "reloaded": True, "generation": 2, "models": ["m1", "m2"],
        "providers": {"kept": ["a", "b"], "started": [], "stopped": []},
    }  # fmt: skip
    assert served.answer("m1") == "b" and served.answer("m2") == "a"
    assert [model.id for model in served.client.models.list()] == ["m1", "m2"]
    # The same file again: nothing to do, and nothing is swapped.
    again = served.reload().json()
    assert again["reloaded"] is False and again["generation"] == 2


def test_a_bad_file_is_refused_with_the_start_messages_and_the_old_one_serves(
    served: Served, upstreams: tuple[FaultyUpstream, FaultyUpstream]
) -> None:
    served.path.write_text(config_text(upstreams, {"m1": "a"}).replace("provider: a", "provider: nowhere"))
    answer = served.reload()
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["code"] == "invalid_config"
    with pytest.raises(Exception) as at_start:
        load_config(served.path)
    assert error["message"] == str(at_start.value)  # the same lines `switchyard serve` prints
    assert "models.m1.deployments[0].provider" in error["message"]
    served.path.write_text("models: [unclosed")
    assert served.reload().json()["error"]["code"] == "invalid_config"
    assert served.answer("m1") == "a"
    assert served.app.generation.number == 1


def test_a_change_only_a_restart_applies_is_refused_whole(
    served: Served, upstreams: tuple[FaultyUpstream, FaultyUpstream]
) -> None:
    served.path.write_text(config_text(upstreams, {"m1": "b"}, body_timeout=99, usage_ledger=False))
    answer = served.reload()
    assert answer.status_code == 409
    error = answer.json()["error"]
    assert error["code"] == "restart_required"
    assert "server.body_timeout, server.usage_ledger" in error["message"]
    assert served.answer("m1") == "a"  # the model change in the same file was not applied either


def test_reloading_needs_an_admin_key(served: Served) -> None:
    assert served.reload(key=None).status_code == 401
    refused = served.reload(key=CLIENT)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_key_required"
    assert served.reload(key="sk-nobody").status_code == 401


def test_keys_are_reloaded(served: Served, upstreams: tuple[FaultyUpstream, FaultyUpstream]) -> None:
    text = config_text(upstreams, {"m1": "a"}).replace(CLIENT, "sk-rotated-client-key-0123456789")
    served.path.write_text(text)
    assert served.reload().status_code == 200
    with pytest.raises(openai.AuthenticationError):
        served.answer("m1")
    rotated = openai.OpenAI(
        base_url=f"{served.url}/v1",
        api_key="sk-rotated-client-key-0123456789",
        max_retries=0,
    )
    assert rotated.chat.completions.create(model="m1", messages=HI).choices[0].message.content == "a"  # type: ignore[arg-type]


def test_without_a_file_there_is_nothing_to_reload(
    upstreams: tuple[FaultyUpstream, FaultyUpstream], tmp_path: Path
) -> None:
    path = tmp_path / "providers.yaml"
    path.write_text(config_text(upstreams, {"m1": "a"}))
    with ServedApp(create_app(load_config(path))) as server:
        answer = httpx.post(f"{server.url}/admin/reload", headers={"authorization": f"Bearer {ADMIN}"})
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "reload_unavailable"


def test_streams_in_flight_finish_on_the_old_table_and_its_provider_closes_after(
    served: Served, upstreams: tuple[FaultyUpstream, FaultyUpstream]
) -> None:
    a, _ = upstreams
    a.script(Fault.ok(events=120))  # about 0.6 s of events
    first = served.app.generation
    old_provider = first.adapters["a"]
    stream = served.client.chat.completions.create(model="m1", messages=HI, stream=True)  # type: ignore[arg-type]
    events = iter(stream)
    texts = [next(events).choices[0].delta.content]
    # Provider a's entry changes (a timeout): a new adapter is started for it; the old one serves this stream.
    text = config_text(upstreams, {"m1": "b"}).replace(
        f"base_url: {a.url}/v1", f"base_url: {a.url}/v1\n    timeout: 77"
    )
    served.path.write_text(text)
    report = served.reload().json()
    assert report["providers"] == {"kept": ["b"], "started": ["a"], "stopped": ["a"]}
    assert served.answer("m1") == "b"  # new requests: the new table
    assert first.in_flight == 1
    texts += [chunk.choices[0].delta.content for chunk in events if chunk.choices]
    assert "".join(t or "" for t in texts) == "".join(f"a-{i} " for i in range(120))  # the whole stream, once
    deadline = time.monotonic() + 5
    while first.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert first.in_flight == 0
    assert served.app.generation.adapters["a"] is not old_provider


def test_many_reloads_while_requests_run_lose_none(
    served: Served, upstreams: tuple[FaultyUpstream, FaultyUpstream]
) -> None:
    """Reloads swapping m1 between a and b under a steady load: every request answered once, by a or b."""
    answers: list[str] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                answers.append(served.answer("m1"))
            except BaseException as error:  # noqa: BLE001 - any failure is the finding
                failures.append(error)

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        for round_ in range(10):
            served.path.write_text(config_text(upstreams, {"m1": "ab"[round_ % 2]}, max_model_chars=300 + round_))
            assert served.reload().status_code == 200
            time.sleep(0.02)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
    assert not failures, failures[:3]
    assert set(answers) == {"a", "b"} and len(answers) > 20
    assert served.app.generation.number == 11


def test_sighup_reloads_a_served_file(tmp_path: Path, upstreams: tuple[FaultyUpstream, FaultyUpstream]) -> None:
    path = tmp_path / "providers.yaml"
    path.write_text(config_text(upstreams, {"m1": "a"}))
    with GatewayProcess(path, {}) as gateway:
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=CLIENT, max_retries=0)
        assert client.chat.completions.create(model="m1", messages=HI).choices[0].message.content == "a"  # type: ignore[arg-type]
        path.write_text(config_text(upstreams, {"m1": "b"}))
        gateway.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if client.chat.completions.create(model="m1", messages=HI).choices[0].message.content == "b":  # type: ignore[arg-type]
                break
            time.sleep(0.05)
        else:
            pytest.fail("the reloaded file was not served")
        path.write_text("models: [unclosed")
        gateway.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert client.chat.completions.create(model="m1", messages=HI).choices[0].message.content == "b"  # type: ignore[arg-type]
    assert "SIGHUP: the configuration was not reloaded: invalid config" in gateway.log


def local_config(upstreams: tuple[FaultyUpstream, FaultyUpstream], tiny: Path, extra_local: str | None = None,
                 hosted_model: str = "a") -> str:  # fmt: skip
    """A local tiny model beside a hosted one; ``extra_local``: a second local model's path."""
    config = yaml.safe_load(config_text(upstreams, {"hosted": hosted_model}))
    config["providers"]["engine"] = {
        "type": "local",
        "model": str(tiny),
        "dtype": "float32",
        "kv_cache_bytes": 4194304,
    }
    config["models"]["tiny"] = {"deployments": [{"provider": "engine", "model": "tiny"}]}
    if extra_local is not None:
        config["providers"]["engine2"] = {
            "type": "local",
            "model": extra_local,
            "dtype": "float32",
        }
        config["models"]["tiny2"] = {"deployments": [{"provider": "engine2", "model": "tiny2"}]}
    return yaml.safe_dump(config)


def test_an_unchanged_local_model_is_not_reloaded_and_a_failing_new_one_changes_nothing(
    tmp_path: Path,
    upstreams: tuple[FaultyUpstream, FaultyUpstream],
    tiny_model_dir: Path,
) -> None:
    path = tmp_path / "providers.yaml"
    path.write_text(local_config(upstreams, tiny_model_dir))
    app = create_app(load_config(path), reload_from=lambda: load_config(path))
    with ServedApp(app) as server:
        served = Served(app, server.url, path)
        ready = httpx.get(f"{server.url}/health/ready", timeout=30)
        deadline = time.monotonic() + 60
        while ready.status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
            ready = httpx.get(f"{server.url}/health/ready", timeout=30)
        engine = app.generation.adapters["engine"]
        before = served.client.chat.completions.create(model="tiny", messages=HI, max_tokens=5, temperature=0)  # type: ignore[arg-type]

        path.write_text(local_config(upstreams, tiny_model_dir, hosted_model="b"))
        report = served.reload().json()
        assert report["providers"]["kept"] == ["a", "b", "engine"] and report["providers"]["started"] == []
        assert app.generation.adapters["engine"] is engine and engine.state == "ready"
        after = served.client.chat.completions.create(model="tiny", messages=HI, max_tokens=5, temperature=0)  # type: ignore[arg-type]
        assert after.choices[0].message.content == before.choices[0].message.content
        assert served.answer("hosted") == "b"

        path.write_text(local_config(upstreams, tiny_model_dir, extra_local=str(tmp_path / "no-such-model")))
        refused = served.reload()
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["code"] == "model_load_failed"
        assert "no-such-model" in refused.json()["error"]["message"]
        assert app.generation.number == 2 and "tiny2" not in [m.id for m in served.client.models.list()]
        assert httpx.get(f"{server.url}/health/ready").status_code == 200  # the failed model never was served
        assert served.answer("hosted") == "b"


def test_what_the_router_learned_of_a_kept_deployment_stays(
    tmp_path: Path, upstreams: tuple[FaultyUpstream, FaultyUpstream]
) -> None:
    def text(**server: Any) -> str:
        config = yaml.safe_load(config_text(upstreams, {"m1": "a", "m2": "b"}, **server))
        config["router"]["cooldown"] = {"failures": 1, "window": 60, "duration": 60}
        return yaml.safe_dump(config)

    a, _ = upstreams
    path = tmp_path / "providers.yaml"
    path.write_text(text())
    app = create_app(load_config(path), reload_from=lambda: load_config(path))
    with ServedApp(app) as server:
        served = Served(app, server.url, path)
        a.script(Fault.status(500))
        with pytest.raises(openai.InternalServerError):
            served.answer("m1")
        assert app.generation.router.table.states_for("m1")[0].breaker.state == "open"
        path.write_text(text(max_model_chars=500))
        assert served.reload().json()["providers"]["kept"] == ["a", "b"]
        (m1,), (m2,) = (app.generation.router.table.states_for(name) for name in ("m1", "m2"))
        assert m1.breaker.state == "open" and m1.failures == 1  # still cooling down: not sent to again
        assert m2.breaker.state == "closed" and m2.successes == 0
        with pytest.raises(openai.APIStatusError) as cooling:
            served.answer("m1")
        assert cooling.value.status_code == 503
