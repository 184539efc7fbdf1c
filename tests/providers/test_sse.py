from __future__ import annotations

from providers.sse import SSEDecoder, encode_event


def feed_all(chunks: list[bytes]) -> list[bytes]:
    decoder = SSEDecoder()
    return [event for chunk in chunks for event in decoder.feed(chunk)]


def test_events_split_anywhere_are_reassembled() -> None:
    stream = b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n'
    expected = [b'{"a":1}', b'{"b":2}', b"[DONE]"]
    for size in range(1, len(stream) + 1):
        chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
        assert feed_all(chunks) == expected, size


def test_crlf_comments_other_fields_and_multiline_data() -> None:
    stream = b": keep-alive\r\nevent: message\r\nid: 7\r\ndata: one\r\ndata: two\r\n\r\ndata:nospace\n\n"
    assert feed_all([stream]) == [b"one\ntwo", b"nospace"]


def test_incomplete_event_is_pending() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"a"') == []
    assert decoder.pending
    assert decoder.feed(b":1}\n\n") == [b'{"a":1}']
    assert not decoder.pending


def test_encode_event() -> None:
    assert encode_event(b"{}") == b"data: {}\n\n"
