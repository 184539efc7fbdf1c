"""What a JSON body may be before it is checked against the models: its nesting, its model name, the keys errors quote."""

from __future__ import annotations

import orjson
import pytest

from gateway.config import ServerConfig
from gateway.errors import InvalidRequest
from gateway.http.validation import BodyLimits, parse_body
from providers import Endpoint

LIMITS = BodyLimits.of(ServerConfig())
HI = [{"role": "user", "content": "hi"}]


def nested(levels: int) -> bytes:
    return b'{"a":' * levels + b"1" + b"}" * levels


def chat_with(field: bytes) -> bytes:
    return b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "extra": %s}' % field


@pytest.mark.parametrize("padding", [0, 5000])  # small bodies are counted for brackets, larger ones walked
def test_nesting_is_taken_to_the_limit_and_named_past_it(padding: int) -> None:
    pad = b', "pad": "' + b"p" * padding + b'"'
    at_the_limit = chat_with(nested(63))[:-1] + pad + b"}"  # the body is the 64th level
    assert parse_body(at_the_limit, Endpoint.CHAT, LIMITS)["extra"]
    with pytest.raises(InvalidRequest) as refused:
        parse_body(chat_with(nested(64))[:-1] + pad + b"}", Endpoint.CHAT, LIMITS)
    assert refused.value.param == "extra" and "64 levels" in refused.value.message


def test_brackets_inside_strings_do_not_count_as_levels() -> None:
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "[{" * 5000}]})
    assert parse_body(body, Endpoint.CHAT, LIMITS)


def test_the_limits_come_from_the_server_config() -> None:
    limits = BodyLimits.of(ServerConfig(max_json_depth=4, max_model_chars=3))
    with pytest.raises(InvalidRequest) as deep:
        parse_body(
            b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]}', Endpoint.CHAT, limits
        )
    assert deep.value.param == "messages"
    with pytest.raises(InvalidRequest) as long_model:
        parse_body(orjson.dumps({"model": "four", "messages": HI}), Endpoint.CHAT, limits)
    assert long_model.value.param == "model" and "four" not in long_model.value.message


def test_a_long_key_is_quoted_short() -> None:
    key = "k" * 100_000
    with pytest.raises(InvalidRequest) as refused:
        parse_body(orjson.dumps({"model": "m", "messages": HI, "logit_bias": {key: "high"}}), Endpoint.CHAT, LIMITS)
    assert refused.value.param is not None and refused.value.param.startswith("logit_bias.kkk")
    assert len(refused.value.message) < 300


async def test_a_body_cut_short_by_a_disconnect_is_never_parsed() -> None:
    import asyncio

    from gateway.http.relay import read_body

    messages = iter([
        {"type": "http.request", "body": b'{"model": "m", "messages": []}', "more_body": True},
        {"type": "http.disconnect"},
    ])  # fmt: skip

    async def receive() -> dict[str, object]:
        return next(messages)

    scope = {"type": "http", "headers": []}
    with pytest.raises(asyncio.CancelledError):
        await read_body(scope, receive, 1 << 20)
