from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

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


def test_cr_lf_and_crlf_line_ends_even_split_between_cr_and_lf() -> None:
    for end in (b"\n", b"\r", b"\r\n"):
        stream = b"data: one" + end + b"data: two" + end + end + b"data: [DONE]" + end + end
        for size in range(1, len(stream) + 1):
            chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
            assert feed_all(chunks) == [b"one\ntwo", b"[DONE]"], (end, size)


def test_fields_per_the_whatwg_rules() -> None:
    stream = (
        b"\xef\xbb\xbfdata: after a byte order mark\n\n"
        b": a comment\nevent: update\nid: 3\nretry: 10\nunknown: x\ndata:no space\n\n"
        b"data\ndata:  two spaces\n\n"  # a field with no colon: data, empty value; only one space is dropped
        b"event: ping\nid: 4\n\n"  # no data: no event
        b"data: {\ndata: \"a\": 1\ndata: }\n\n"  # multi-line data is joined with LF
        b"data: cut off at the end"
    )
    expected = [b"after a byte order mark", b"no space", b"\n two spaces", b'{\n"a": 1\n}']
    for size in range(1, len(stream) + 1):
        assert feed_all([stream[i : i + size] for i in range(0, len(stream), size)]) == expected, size


payloads = st.binary().map(lambda data: data.replace(b"\r", b""))  # a decoded payload never holds a CR


@given(payloads)
def test_encode_then_decode_gives_back_the_payload(data: bytes) -> None:
    assert feed_all([encode_event(data)]) == [data]


@given(st.lists(payloads, min_size=1, max_size=5), st.data())
def test_events_survive_any_split_and_any_line_end(events: list[bytes], draw: st.DataObject) -> None:
    end = draw.draw(st.sampled_from([b"\n", b"\r", b"\r\n"]))
    stream = b"".join(encode_event(event) for event in events).replace(b"\n", end)
    cuts = sorted(draw.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
    assert feed_all(chunks) == events


def test_multi_line_payloads_are_framed_one_data_line_each() -> None:
    assert encode_event(b'{\n"a": 1\n}') == b'data: {\ndata: "a": 1\ndata: }\n\n'
    assert encode_event(b"a\r\nb\rc") == b"data: a\ndata: b\ndata: c\n\n"
