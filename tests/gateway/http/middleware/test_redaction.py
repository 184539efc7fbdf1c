"""The masking middleware on its own: any write pattern, any body, the same length out, no secret."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from gateway.http.middleware.redaction import RedactSecretsMiddleware
from providers.redact import SecretMask, redact, same_length_mask

SECRETS = ("sk-planted-0123456789abcdef", 'k"ey\\with/quotes', "eight ch")
mask = SecretMask([*SECRETS, "clé-secrète-0123456789", "EMPTY"])


async def served(writes: list[bytes], headers: list[tuple[bytes, bytes]] | None = None) -> list[dict[str, Any]]:
    """What a client gets from an app that writes ``writes`` behind the middleware."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers or []})
        for index, body in enumerate(writes):
            await send({"type": "http.response.body", "body": body, "more_body": index < len(writes) - 1})

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await RedactSecretsMiddleware(app, mask)({"type": "http"}, None, send)
    return sent


def body_of(sent: list[dict[str, Any]]) -> bytes:
    return b"".join(message.get("body", b"") for message in sent[1:])


async def test_a_key_split_across_writes_is_masked_and_the_length_kept() -> None:
    whole = b'data: {"content": "sk-planted-0123456789abcdef"}\n\n'
    for cut in range(1, len(whole)):
        body = body_of(await served([whole[:cut], whole[cut:]]))
        assert body == mask.mask(whole) and len(body) == len(whole), cut
        assert b"sk-planted" not in body


async def test_header_values() -> None:
    sent = await served([b"{}"], [(b"content-length", b"2"), (b"x-echo", b"Bearer sk-planted-0123456789abcdef")])
    assert sent[0]["headers"] == [(b"content-length", b"2"), (b"x-echo", b"Bearer [redacted]*****************")]
    untouched = [(b"content-length", b"2")]
    assert (await served([b"{}"], untouched))[0]["headers"] is untouched  # nothing found: the same list, no copy


async def test_the_json_forms_of_a_key() -> None:
    """A key with a quote, a backslash or a non-ASCII letter reads otherwise inside JSON; each reading is masked."""
    for secret in SECRETS[1], "clé-secrète-0123456789":
        for body in orjson.dumps({"echo": secret}), json.dumps({"echo": secret}).encode():
            masked = body_of(await served([body]))
            assert len(masked) == len(body)
            assert json.loads(masked)["echo"].startswith("[redacted]"), masked


@given(st.binary(max_size=200), st.sampled_from(SECRETS), st.data())
async def test_any_body_any_writes(noise: bytes, secret: str, draw: st.DataObject) -> None:
    at = draw.draw(st.integers(0, len(noise)))
    whole = noise[:at] + secret.encode() + noise[at:]
    cuts = sorted(draw.draw(st.lists(st.integers(0, len(whole)), max_size=6)))
    writes = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)])]
    body = body_of(await served(writes))
    assert len(body) == len(whole)
    assert secret.encode() not in body
    assert body == mask.mask(whole)


def test_masks() -> None:
    assert same_length_mask(27) == b"[redacted]*****************"
    assert same_length_mask(8) == b"********"
    assert redact("key EMPTY here", ["EMPTY"]) == "key [redacted] here"  # logs: the plain mask, any length
    assert not SecretMask(["", ""])  # no secrets: the gateway adds no middleware


def test_a_key_too_short_to_be_a_secret_is_not_masked_in_answers() -> None:
    """``api_key: EMPTY`` (vLLM's habit) would otherwise turn every "EMPTY" in every answer into stars."""
    assert mask.too_short == 1
    assert mask.mask(b"the list is EMPTY") == b"the list is EMPTY"
    assert not SecretMask(["EMPTY", "test"]) and SecretMask(["EMPTY", "test"]).too_short == 2
