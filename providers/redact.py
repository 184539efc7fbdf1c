"""Keep provider keys out of anything a client or a log can read.

Two maskings of the same secrets: ``redact`` for log lines (text, the
mask is ``[redacted]``), and :class:`SecretMask` for bytes on the wire,
where every mask is exactly as long as what it hides, so a response's
``Content-Length`` stays true whatever is masked (``gateway/http/middleware/redaction.py``
applies it to every response).

A key is found in the forms it takes in a response: as it is, and as it
reads inside a JSON string (escaped by orjson's rules and by Python's
``json`` with ``ensure_ascii``). A key an upstream re-encodes otherwise
(base64, URL-encoding, split by escapes) cannot be found by any substring
search; none of OpenAI's protocol does that.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import Iterable

import orjson

MASK = "[redacted]"
# Shorter secrets are not masked in answers (see SecretMask); real provider keys are 30 characters and more.
MIN_MASKED_LENGTH = 8


def secret_forms(secrets: Iterable[str]) -> tuple[str, ...]:
    """Each non-empty secret as it is and as it reads inside JSON strings, longest first."""
    return _forms(tuple(secrets))


@functools.lru_cache(maxsize=16)  # a server has one set of secrets; the log formatter asks on every line
def _forms(secrets: tuple[str, ...]) -> tuple[str, ...]:
    forms: set[str] = set()
    for secret in secrets:
        if secret:
            forms |= {secret, json.dumps(secret)[1:-1]}
            # orjson refuses a lone surrogate (undecodable bytes in the environment); json took it above.
            with contextlib.suppress(TypeError):
                forms.add(orjson.dumps(secret).decode()[1:-1])
    # Longest first: a secret that contains another is masked whole.
    return tuple(sorted(forms, key=len, reverse=True))


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret in ``text`` with a mask."""
    for form in secret_forms(secrets):
        if form in text:
            text = text.replace(form, MASK)
    return text


def same_length_mask(length: int) -> bytes:
    """``[redacted]`` padded with ``*`` to ``length`` bytes, or ``*`` alone when shorter."""
    if length < len(MASK):
        return b"*" * length
    return MASK.encode() + b"*" * (length - len(MASK))


class SecretMask:
    """Masks secrets in bytes without changing their length; one per server, shared by every request.

    All secrets are one compiled pattern, so a write is scanned once however
    many keys are configured; a write without any (nearly all of them) costs
    that one scan and no copy.

    A secret split across two writes is caught by holding back the end of a
    write while it could be the start of a secret (``unsafe_tail``), which
    the gateway's own writes never are: they end in ``}``, ``\\n`` or a
    whole event.

    Secrets shorter than ``MIN_MASKED_LENGTH`` are left out (``too_short``
    counts them): a key such as ``EMPTY`` or ``test`` is no secret, and
    masking it would mask that word in every answer. Log lines mask them all.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        secrets = [secret for secret in secrets if secret]
        kept = [secret for secret in secrets if len(secret) >= MIN_MASKED_LENGTH]
        self.too_short = len(secrets) - len(kept)
        forms = [form.encode("utf-8", "surrogateescape") for form in secret_forms(kept)]
        self._forms = tuple(forms)
        self._masks = {form: same_length_mask(len(form)) for form in forms}
        # Longest first (secret_forms' order): where two secrets start at one place, the longer is masked whole.
        self._pattern = re.compile(b"|".join(re.escape(form) for form in forms)) if forms else None
        # Bytes that occur in some secret: a write ending in any other byte cannot end inside one.
        self._secret_bytes = frozenset(byte for form in forms for byte in form)

    def __bool__(self) -> bool:
        return self._pattern is not None

    def finds(self, data: bytes) -> bool:
        """Whether ``data`` holds a secret."""
        return self._pattern is not None and self._pattern.search(data) is not None

    def mask(self, data: bytes) -> bytes:
        """``data`` with every secret masked; the same length (``data`` itself when it holds none)."""
        if self._pattern is None or self._pattern.search(data) is None:
            return data
        masks = self._masks
        return self._pattern.sub(lambda found: masks[found.group()], data)

    def unsafe_tail(self, data: bytes) -> int:
        """How many bytes at the end of (masked) ``data`` could begin a secret that goes on in the next write."""
        if not data or data[-1] not in self._secret_bytes:
            return 0
        size, held = len(data), 0
        for form in self._forms:
            first = form[:1]
            start = data.find(first, max(0, size - len(form) + 1))
            while start != -1:  # the first place that begins this secret and runs to the end is its longest
                if form.startswith(data[start:]):
                    held = max(held, size - start)
                    break
                start = data.find(first, start + 1)
        return held
