"""Keep provider keys out of anything a client or a log can read."""

from __future__ import annotations

from collections.abc import Iterable

MASK = "[redacted]"


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret in ``text`` with a mask."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, MASK)
    return text
