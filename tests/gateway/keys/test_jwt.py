"""JWT sign-in (server.jwt): tokens signed in the test, a JWKS served by the test, the openai SDK as the client."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import openai
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.app import create_app
from gateway.config import ConfigError, GatewayConfig, JwtConfig, parse_config
from gateway.errors import InvalidToken
from gateway.keys import jwt_auth
from gateway.keys.jwt_auth import TokenVerifier
from tests.conftest import GATEWAY_YAML
from tests.support.servers import ServedApp

ISSUER = "https://idp.test"
AUDIENCE = "switchyard"
ADMIN = "sk-admin-jwt-0123456789"
PLAIN_KEY = "sk-plain-jwt-0123456789"
MIN_INTERVAL = 1.0  # server.jwt.jwks_min_interval below
HI = [{"role": "user", "content": "hi"}]


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class Jwks:
    """A JWKS endpoint on 127.0.0.1 whose keys the test sets, counting its hits."""

    keys: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)
    hits: int = 0

    def document(self) -> bytes:
        published = []
        for kid, key in self.keys.items():
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            published.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return json.dumps({"keys": published}).encode()


@pytest.fixture(scope="module")
def jwks() -> Iterator[tuple[Jwks, str]]:
    state = Jwks({"k1": rsa_key()})
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            with lock:
                state.hits += 1
                body = state.document()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    server.shutdown()
    server.server_close()


def jwt_yaml(jwks_url: str) -> str:
    return f"""
  admin_keys: ["{ADMIN}"]
  api_keys:
    - {{key: "{PLAIN_KEY}", name: plain, models: ["*"]}}
    - {{key_sha256: "{"0" * 64}", name: ci-bot, models: [gpt-test], rpm: 2}}
  jwt:
    issuer: {ISSUER}
    audience: {AUDIENCE}
    jwks_url: {jwks_url}
    leeway: 30
    jwks_min_interval: {MIN_INTERVAL}
    claims: {{key_name: sub, models: models}}
    default: {{models: [gpt-test, embed-test]}}
"""


@pytest.fixture(scope="module")
def gateway(gateway_config: GatewayConfig, jwks: tuple[Jwks, str]) -> Iterator[str]:
    environ = {"FAKE_URL": "http://unused", "FAKE_KEY": "x", "WRONG_KEY": "y"}
    text = GATEWAY_YAML.replace("router:\n", "server:\n" + jwt_yaml(jwks[1]) + "router:\n", 1)
    config = parse_config(text, environ=environ)
    config = config.model_copy(update={"providers": gateway_config.providers})
    with ServedApp(create_app(config)) as served:
        yield served.url


def token(key: rsa.RSAPrivateKey, kid: str = "k1", algorithm: str = "RS256", **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300, **claims}
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, key, algorithm=algorithm, headers={"kid": kid})


def client(url: str, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0)


def refused(url: str, api_key: str) -> str:
    """The 401's message for ``api_key``, checked to hold no part of it."""
    with pytest.raises(openai.AuthenticationError) as caught:
        client(url, api_key).chat.completions.create(model="gpt-test", messages=HI)
    assert caught.value.code == "invalid_token"
    body = caught.value.response.text
    assert not any(part in body for part in api_key.split(".")[1:] if part)  # neither its claims nor its signature
    return caught.value.response.json()["error"]["message"]  # type: ignore[no-any-return]


def usage_requests(url: str, name: str) -> int:
    deadline = time.monotonic() + 10  # the ledger writes once a second
    while time.monotonic() < deadline:
        rows = httpx.get(f"{url}/v1/usage", params={"api_key": name}, headers={"Authorization": f"Bearer {ADMIN}"}).json()["data"]
        if rows:
            return sum(row["requests"] for row in rows)  # type: ignore[no-any-return]
        time.sleep(0.1)
    return 0


def test_a_valid_token_is_answered_and_recorded_under_its_name(gateway: str, jwks: tuple[Jwks, str]) -> None:
    signed = token(jwks[0].keys["k1"], sub="alice-svc")
    answer = client(gateway, signed).chat.completions.create(model="gpt-test", messages=HI)
    assert answer.choices[0].message.content
    assert usage_requests(gateway, "alice-svc") == 1


def test_an_expired_token_is_refused_unless_within_the_leeway(gateway: str, jwks: tuple[Jwks, str]) -> None:
    key, now = jwks[0].keys["k1"], int(time.time())
    assert refused(gateway, token(key, iat=now - 600, exp=now - 60)) == "The bearer token was refused: the token has expired."
    skewed = token(key, iat=now - 600, exp=now - 10)  # 10 s past exp, within the 30 s leeway
    assert client(gateway, skewed).chat.completions.create(model="gpt-test", messages=HI).choices
    assert "no `exp` claim" in refused(gateway, token(key, exp=None))


def test_the_wrong_audience_or_issuer_is_named(gateway: str, jwks: tuple[Jwks, str]) -> None:
    key = jwks[0].keys["k1"]
    assert f"the token's audience is not `{AUDIENCE}`" in refused(gateway, token(key, aud="someone-else"))
    assert f"the token's issuer is not `{ISSUER}`" in refused(gateway, token(key, iss="https://evil.test"))


def test_a_bad_signature_and_alg_none_are_refused(gateway: str, jwks: tuple[Jwks, str]) -> None:
    forged = token(rsa_key())  # kid k1, signed by another key
    assert "signature does not verify" in refused(gateway, forged)
    unsigned = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": int(time.time()) + 60}, None, algorithm="none")
    assert "algorithm `none` is not one of RS256, ES256" in refused(gateway, unsigned)
    header, payload, signature = token(jwks[0].keys["k1"]).split(".")
    other = jwt.utils.base64url_encode(b'{"sub":"mallory","iss":"https://idp.test","aud":"switchyard","exp":9999999999}')
    assert "signature does not verify" in refused(gateway, f"{header}.{other.decode()}.{signature}")


def test_a_rotated_key_is_fetched_once_and_a_flood_of_unknown_kids_is_bounded(gateway: str, jwks: tuple[Jwks, str]) -> None:
    state = jwks[0]
    client(gateway, token(state.keys["k1"])).models.list()  # the JWKS is fetched by now
    time.sleep(MIN_INTERVAL + 0.1)
    state.keys["k2"] = rsa_key()  # the issuer rotates: k2 signs from now on
    before = state.hits
    rotated = client(gateway, token(state.keys["k2"], kid="k2"))
    assert rotated.chat.completions.create(model="gpt-test", messages=HI).choices
    assert rotated.chat.completions.create(model="gpt-test", messages=HI).choices
    assert state.hits == before + 1  # refetched once for the new kid, then cached

    time.sleep(MIN_INTERVAL + 0.1)
    before, started = state.hits, time.monotonic()
    for attempt in range(40):
        assert "is not one the issuer publishes" in refused(gateway, token(state.keys["k2"], kid=f"made-up-{attempt}"))
    elapsed = time.monotonic() - started
    assert 1 <= state.hits - before <= math.ceil(elapsed / MIN_INTERVAL) + 1


def test_a_models_claim_narrows_what_the_token_may_call(gateway: str, jwks: tuple[Jwks, str]) -> None:
    narrowed = client(gateway, token(jwks[0].keys["k1"], sub="narrow", models=["embed-test"]))
    assert [m.id for m in narrowed.models.list()] == ["embed-test"]  # the default allows gpt-test and embed-test
    with pytest.raises(openai.PermissionDeniedError) as caught:
        narrowed.chat.completions.create(model="gpt-test", messages=HI)
    assert caught.value.code == "model_not_allowed" and "narrow" in caught.value.message
    with pytest.raises(openai.NotFoundError):
        narrowed.models.retrieve("gpt-test")
    assert narrowed.embeddings.create(model="embed-test", input="x").data


def test_a_token_named_as_an_api_key_takes_its_policy(gateway: str, jwks: tuple[Jwks, str]) -> None:
    bot = client(gateway, token(jwks[0].keys["k1"], sub="ci-bot"))  # api_keys: ci-bot, models [gpt-test], rpm 2
    for _ in range(2):
        assert bot.chat.completions.with_raw_response.create(model="gpt-test", messages=HI).headers["x-ratelimit-limit-requests"] == "2"
    with pytest.raises(openai.RateLimitError) as caught:
        bot.chat.completions.create(model="gpt-test", messages=HI)
    assert "ci-bot" in caught.value.message
    with pytest.raises(openai.PermissionDeniedError):
        bot.embeddings.create(model="embed-test", input="x")
    assert "`admin`" in refused(gateway, token(jwks[0].keys["k1"], sub="admin"))  # never the admin keys' powers


def test_api_keys_still_work_beside_tokens(gateway: str) -> None:
    assert client(gateway, PLAIN_KEY).chat.completions.create(model="gpt-test", messages=HI).choices
    with pytest.raises(openai.AuthenticationError) as caught:
        client(gateway, "sk-unknown").chat.completions.create(model="gpt-test", messages=HI)
    assert caught.value.code == "invalid_api_key"


def test_no_token_reaches_an_answer_or_a_log_line(
    gateway: str, jwks: tuple[Jwks, str], caplog: pytest.LogCaptureFixture
) -> None:
    key, now = jwks[0].keys["k1"], int(time.time())
    tokens = [token(key, exp=now - 120), token(key, aud="x"), token(rsa_key()), token(key, kid="nope"), token(key)]
    with caplog.at_level(logging.DEBUG):
        for signed in tokens:
            response = httpx.post(f"{gateway}/v1/chat/completions", json={"model": "gpt-test", "messages": HI},
                                  headers={"Authorization": f"Bearer {signed}"})  # fmt: skip
            assert signed not in response.text and signed not in str(response.headers)
    logged = caplog.text
    assert "The bearer token was refused: the token has expired." in logged  # refusals are logged, with why
    assert not any(part in logged for signed in tokens for part in signed.split(".")[1:])


def test_server_jwt_needs_exactly_one_key_source() -> None:
    for jwt_block in ("{issuer: a, audience: b}", "{issuer: a, audience: b, jwks_url: 'https://x', public_key: 'PEM'}"):
        with pytest.raises(ConfigError, match="exactly one of `jwks_url` and `public_key`"):
            parse_config(GATEWAY_YAML.replace("router:\n", f"server:\n  jwt: {jwt_block}\nrouter:\n", 1), environ={"FAKE_URL": "x", "FAKE_KEY": "x", "WRONG_KEY": "y"})
    with pytest.raises(ConfigError, match="algorithms"):
        parse_config(GATEWAY_YAML.replace("router:\n", "server:\n  jwt: {issuer: a, audience: b, jwks_url: 'https://x', algorithms: [none]}\nrouter:\n", 1), environ={"FAKE_URL": "x", "FAKE_KEY": "x", "WRONG_KEY": "y"})


def jwt_config(**fields: Any) -> JwtConfig:
    return JwtConfig(issuer=ISSUER, audience=AUDIENCE, **fields)


async def test_a_configured_public_key_verifies_without_a_jwks() -> None:
    key = rsa_key()
    pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    verifier = TokenVerifier(jwt_config(public_key=pem))
    assert (await verifier.claims(token(key, sub="bob")))["sub"] == "bob"
    with pytest.raises(InvalidToken, match="signature does not verify"):
        await verifier.claims(token(rsa_key()))
    with pytest.raises(ConfigError, match="not a PEM public key"):
        TokenVerifier(jwt_config(public_key="not a key"))


async def test_an_issuer_that_is_down_leaves_the_fetched_keys_in_use() -> None:
    key, now = rsa_key(), [0.0]
    published = json.loads(Jwks({"k1": key}).document())
    answers: list[Any] = [published, httpx.ConnectError("down")]

    async def fetch(url: str) -> Any:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    verifier = TokenVerifier(jwt_config(jwks_url="https://idp.test/jwks", jwks_ttl=10, jwks_min_interval=5), fetch)
    verifier._keys._clock = lambda: now[0]  # type: ignore[attr-defined]
    assert await verifier.claims(token(key))
    now[0] = 11  # past the TTL: the refetch fails, the old keys stay
    assert await verifier.claims(token(key))
    assert not answers


def test_without_pyjwt_server_jwt_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jwt_auth, "jwt", None)
    with pytest.raises(ConfigError, match=r"pip install 'switchyard\[jwt\]'"):
        TokenVerifier(jwt_config(jwks_url="https://idp.test/jwks"))
