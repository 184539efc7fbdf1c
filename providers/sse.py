"""Server-sent events: decoding an upstream's stream and framing events for a client (WHATWG rules).

Decoding follows the HTML standard's event-stream interpretation:

* a line ends in CRLF, LF or CR, and a chunk may end anywhere, even
  between the CR and the LF of one line end;
* ``field: value`` (one space after the colon dropped), a line with no
  colon is a field with an empty value, a line starting with ``:`` is a
  comment;
* each ``data`` field adds a line to the event's data, joined with LF;
* a blank line dispatches the event, only if it has data; a stream that
  ends mid-event drops that event;
* a UTF-8 byte order mark before the first line is skipped.

OpenAI's protocol carries everything in ``data``, so only the data is
returned; ``event``, ``id`` and ``retry`` are parsed (so they are never
mistaken for data) and dropped: the OpenAI SDKs read ``event`` only for the
Assistants API, and the gateway does not reconnect, so ``id`` and ``retry``
have no use here.
"""

from __future__ import annotations

_BOM = b"\xef\xbb\xbf"


class SSEDecoder:
    def __init__(self) -> None:
        self._partial_line = b""
        self._data_lines: list[bytes] = []
        self._started = False  # past the place a byte order mark may be
        self._after_cr = False  # the last chunk ended in CR: an LF first in the next one ends no line

    def feed(self, chunk: bytes) -> list[bytes]:
        """Take the next bytes off the wire; return the data of each event they complete."""
        if not chunk:
            return []
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._after_cr = chunk.endswith(b"\r")
        if b"\r" in chunk:  # CRLF and a lone CR both end a line; OpenAI sends LF only (fast path)
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffered = self._partial_line + chunk
        if not self._started:
            if len(buffered) < len(_BOM) and _BOM.startswith(buffered):
                self._partial_line = buffered
                return []
            self._started = True
            buffered = buffered.removeprefix(_BOM)
        lines = buffered.split(b"\n")
        self._partial_line = lines.pop()
        events: list[bytes] = []
        for line in lines:
            if not line:
                if self._data_lines:
                    events.append(b"\n".join(self._data_lines))
                    self._data_lines = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data_lines.append(value[1:] if value.startswith(b" ") else value)
            elif line == b"data":
                self._data_lines.append(b"")
            # Anything else is a comment (":..."), event, id, retry or an unknown field: none carries data.
        return events

    @property
    def pending(self) -> bool:
        """True when bytes of an unfinished event are buffered."""
        return bool(self._partial_line.strip() or self._data_lines)


def encode_event(data: bytes) -> bytes:
    """Frame one payload as an SSE event: one ``data:`` line per line of it, so any client rebuilds it exactly.

    A payload with a line break (an upstream's multi-line ``data``, JSON
    with newlines in it) written as one ``data:`` line would end the field
    early and hand the client half a JSON document.
    """
    if b"\n" not in data and b"\r" not in data:  # the usual case: single-line JSON
        return b"data: " + data + b"\n\n"
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    return b"".join([b"data: " + line + b"\n" for line in lines]) + b"\n"


DONE = b"[DONE]"
DONE_EVENT = encode_event(DONE)
