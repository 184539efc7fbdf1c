"""Incremental decoding of a server-sent event stream (the WHATWG framing).

Only ``data:`` fields matter for OpenAI's protocol; ``event:``, ``id:``,
``retry:`` and comment lines are read and dropped. Lines may end in LF or
CRLF; a chunk may end anywhere, even inside a line.
"""

from __future__ import annotations


class SSEDecoder:
    def __init__(self) -> None:
        self._partial_line = b""
        self._data_lines: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """Take the next bytes off the wire; return the events they complete."""
        lines = (self._partial_line + chunk).split(b"\n")
        self._partial_line = lines.pop()
        events: list[bytes] = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data_lines:
                    events.append(b"\n".join(self._data_lines))
                    self._data_lines = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data_lines.append(value[1:] if value.startswith(b" ") else value)
        return events

    @property
    def pending(self) -> bool:
        """True when bytes of an unfinished event are buffered."""
        return bool(self._partial_line.strip() or self._data_lines)


def encode_event(data: bytes) -> bytes:
    """Frame one payload as an SSE event; payloads here are single-line JSON."""
    return b"data: " + data + b"\n\n"


DONE = b"[DONE]"
DONE_EVENT = encode_event(DONE)
