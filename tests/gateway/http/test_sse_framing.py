"""An upstream's event stream in any legal SSE framing reaches the official SDK whole.

The upstream writes what the WHATWG rules allow and OpenAI never sends: a
JSON event spread over several ``data:`` lines, CR and CRLF line ends,
comments, ``event:`` / ``id:`` / ``retry:`` fields, a ``data`` field
without a colon, and writes cut in the middle of lines and between a CR
and its LF. The gateway re-frames each event with one ``data:`` line per
line of its payload, so the SDK parses every chunk.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import orjson
import pytest

from gateway.app import create_app
from gateway.config import parse_config
from tests.support.fakes.scripted import Answer, ScriptedUpstream
from tests.support.servers import ServedApp

WORDS = ["Hello", " there", ",", " friend"]


def chunk(text: str) -> dict[str, object]:
    return {"id": "chatcmpl-sse", "object": "chat.completion.chunk", "created": 1700000000, "model": "m",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}  # fmt: skip


def legal_but_unusual_stream() -> list[bytes]:
    pretty = [orjson.dumps(chunk(word), option=orjson.OPT_INDENT_2) for word in WORDS]  # JSON over several lines
    events = [
        b": keep-alive comment\nretry: 3000\n" + b"".join(b"data: " + line + b"\n" for line in pretty[0].split(b"\n")) + b"\n",
        b"event: message\r\nid: 2\r\n" + b"".join(b"data:" + line + b"\r\n" for line in pretty[1].split(b"\n")) + b"\r\n",
        b"".join(b"data: " + line + b"\r" for line in pretty[2].split(b"\n")) + b"data\r\r",  # "data": one more (empty) line
        b"data: " + orjson.dumps(chunk(WORDS[3])) + b"\n\n",
        b"data: [DONE]\r\n\r\n",
    ]
    stream = b"".join(events)
    cuts = [7, 8, stream.index(b"\r\n") + 1, stream.index(b"\r\r") + 1, len(stream) - 3]  # inside lines, CR|LF
    return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    upstream = ScriptedUpstream(
        script=lambda request: Answer(headers=[(b"content-type", b"text/event-stream")], chunks=legal_but_unusual_stream())
    )
    with ServedApp(upstream) as served:
        config = parse_config(
            "providers: {sse: {type: custom, base_url: '${URL}/v1'}}\n", environ={"URL": served.url}
        )
        with ServedApp(create_app(config)) as gateway:
            yield gateway.url


def test_the_sdk_reads_every_chunk(gateway: str) -> None:
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="client-key", max_retries=0)
    stream = client.chat.completions.create(model="sse/m", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert [c.choices[0].delta.content for c in stream] == WORDS


def test_each_line_of_a_payload_is_its_own_data_line(gateway: str) -> None:
    body = {"model": "sse/m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    text = httpx.post(f"{gateway}/v1/chat/completions", json=body).text
    events = text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    for event in events[:-1]:
        assert all(line.startswith("data: ") for line in event.split("\n")), event
    assert "\r" not in text
    first = events[0].split("\n")
    assert len(first) > 1 and orjson.loads("\n".join(line.removeprefix("data: ") for line in first)) == chunk(WORDS[0])
