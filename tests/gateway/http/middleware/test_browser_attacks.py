"""A web page in a real browser cannot spend the open gateway's provider credits.

Headless Chromium loads a page from another origin (another port on
127.0.0.1) that tries what any page a user visits could: a cross-site
"simple" ``fetch`` with a ``text/plain`` body, the same with
``application/json`` (which needs a preflight), and a form POST whose
``text/plain`` body is JSON. Then DNS rebinding: Chromium resolves
``evil.test`` to 127.0.0.1 (``--host-resolver-rules``), as an attacker's DNS
would after the page loaded, so a page at ``http://evil.test:<gateway port>``
is same-origin with the gateway and may send anything; its requests still
say ``Host: evil.test``. The gateway must have seen each attempt, and the
fake upstream none of them. A control from ``http://127.0.0.1`` shows the
same request would have reached the upstream.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from gateway.app import create_app
from gateway.config import GatewayConfig
from tests.support.browser import chromium
from tests.support.fakes.asgi import serve_lifespan
from tests.support.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServedApp

ATTACK_PAGE = """<!doctype html>
<title>a page on another origin</title>
<iframe name="sink" id="sink"></iframe>
<form id="form" method="POST" enctype="text/plain" target="sink" action="GATEWAY/v1/chat/completions">
<input type="hidden" name='{"model": "gpt-test", "messages": [{"role": "user", "content": "from a form' value='"}]}'>
</form>
<script>
const CHAT = JSON.stringify({model: "gpt-test", messages: [{role: "user", content: "from fetch"}]});
window.attacks = (async () => {
  const outcome = {};
  try {
    await fetch("GATEWAY/v1/chat/completions",
                {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"}, body: CHAT});
    outcome.simple = "sent";
  } catch (error) { outcome.simple = String(error); }
  try {
    const answer = await fetch("GATEWAY/v1/chat/completions",
                               {method: "POST", headers: {"Content-Type": "application/json"}, body: CHAT});
    outcome.json = answer.status;
  } catch (error) { outcome.json = "blocked"; }
  outcome.form = await new Promise(resolve => {
    document.getElementById("sink").onload = () => resolve("submitted");
    document.getElementById("form").submit();
  });
  return outcome;
})();
</script>
"""
# Run in a page of the gateway's own origin: what the rebinding page's script can do.
SAME_ORIGIN_CHAT = """
const done = arguments[arguments.length - 1];
const chat = {model: "gpt-test", messages: [{role: "user", content: "same origin"}]};
fetch("/v1/chat/completions",
      {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(chat)})
  .then(answer => answer.json().then(body => done([answer.status, body.error ? body.error.code : "answered"])),
        error => done(["failed", String(error)]));
"""


class SeenRequests:
    """The gateway's app, wrapped to record each request's method, path, Host and Content-Type."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[tuple[str, str, str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {name: value.decode("latin-1") for name, value in scope["headers"]}
            seen = (scope["method"], scope["path"], headers.get(b"host", ""), headers.get(b"content-type", ""))
            self.seen.append(seen)
        await self.app(scope, receive, send)


def attacker_site(gateway_url: str) -> Any:
    page = ATTACK_PAGE.replace("GATEWAY", gateway_url).encode()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/html")]})
        await send({"type": "http.response.body", "body": page})

    return app


@pytest.fixture()
def recorded_gateway(gateway_config: GatewayConfig) -> Iterator[tuple[SeenRequests, ServedApp]]:
    """The default, open gateway on 127.0.0.1 (no keys, no CORS), served as `switchyard serve` serves it."""
    server = gateway_config.server.model_copy(update={"usage_ledger": False})
    recorder = SeenRequests(create_app(gateway_config.model_copy(update={"server": server})))
    with ServedApp(recorder, server=server) as served:
        yield recorder, served


def test_a_cross_site_page_and_a_rebinding_page_reach_no_provider(
    recorded_gateway: tuple[SeenRequests, ServedApp], fake: FakeOpenAI
) -> None:
    recorder, gateway = recorded_gateway
    chat = "/v1/chat/completions"
    rebinding = "--host-resolver-rules=MAP evil.test 127.0.0.1"
    with ServedApp(attacker_site(gateway.url)) as attacker, chromium([rebinding]) as browser:
        browser.get(attacker.url)
        outcome = browser.execute_async_script("window.attacks.then(arguments[arguments.length - 1]);")
        assert outcome == {"simple": "sent", "json": "blocked", "form": "submitted"}

        browser.get(f"http://evil.test:{gateway.port}/health")  # now a page of the gateway's origin, by its name
        assert browser.execute_async_script(SAME_ORIGIN_CHAT) == [421, "host_not_allowed"]

        seen = list(recorder.seen)
        local = f"127.0.0.1:{gateway.port}"
        assert seen.count(("POST", chat, local, "text/plain")) == 2  # the simple fetch and the form
        assert ("OPTIONS", chat, local, "") in seen  # the JSON fetch's preflight, refused: no CORS
        assert ("POST", chat, local, "application/json") not in seen
        # Rebound (twice: Chromium retries a 421 on a new connection).
        assert ("POST", chat, f"evil.test:{gateway.port}", "application/json") in seen
        assert fake.requests == [], "an attack reached the provider"

        browser.get(f"{gateway.url}/health")  # the control: the gateway's own origin, a loopback Host
        assert browser.execute_async_script(SAME_ORIGIN_CHAT) == [200, "answered"]
    assert [request.body["messages"][0]["content"] for request in fake.requests] == ["same origin"]
