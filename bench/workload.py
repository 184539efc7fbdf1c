"""What the bench sends: the request bodies, the scenarios, and the targets they are judged by."""

from __future__ import annotations

from dataclasses import dataclass

HOST = "127.0.0.1"
MODEL = "bench-model"
CHUNKS = 20  # content events per stream, before [DONE]
STREAM_CONCURRENCY = 16  # the second streaming scenario: many streams at once share the loop's wake-ups

# The targets and, for scale, what LiteLLM (the best-known Python gateway) measures.
TARGETS = {
    "added_p50": 1.0,  # ms added at p50, concurrency 1
    "rps_c64": 800.0,  # requests/s through the gateway at concurrency 64
    "cpu_request": 1.0,  # ms of gateway CPU per non-streamed request
    "cpu_stream": 2.0,  # ms of gateway CPU per 20-chunk stream
}

BODY = (
    b'{"model":"' + MODEL.encode() + b'","messages":[{"role":"system","content":"You are a helpful assistant."},'
    b'{"role":"user","content":"Say hello in one short sentence."}],"temperature":0.7,"max_tokens":64}'
)
STREAM_BODY = BODY[:-1] + b',"stream":true}'


@dataclass(frozen=True)
class Scenario:
    name: str
    stream: bool
    concurrency: int


def scenarios(concurrency: int) -> list[Scenario]:
    """The measured scenarios; ``concurrency`` is the throughput scenario's (``--concurrency``)."""
    return [
        Scenario("c1", False, 1),
        Scenario("c64", False, concurrency),
        Scenario("stream", True, 1),
        Scenario("stream16", True, STREAM_CONCURRENCY),
    ]


def chat_request(port: int, stream: bool) -> bytes:
    """The whole HTTP/1.1 request, built once per phase and written as it is for every request."""
    body = STREAM_BODY if stream else BODY
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:%d\r\n"
        b"content-type: application/json\r\naccept: application/json\r\n"
        b"authorization: Bearer sk-bench\r\nuser-agent: switchyard-bench/1\r\n"
        b"content-length: %d\r\n\r\n%s" % (port, len(body), body)
    )
