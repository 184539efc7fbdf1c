"""One time budget per request, shared by every attempt, wait and fallback."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

from .errors import InvalidRequest

TIMEOUT_HEADER = "x-switchyard-timeout"
_TIMEOUT_HEADER_BYTES = TIMEOUT_HEADER.encode()


class Deadline:
    __slots__ = ("seconds", "_clock", "_expires_at")

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._expires_at = clock() + seconds

    def remaining(self) -> float:
        """Seconds left; zero or less once the deadline has passed."""
        return self._expires_at - self._clock()


def request_timeout(headers: Iterable[tuple[bytes, bytes]], default: float) -> float:
    """The request's deadline in seconds: ``x-switchyard-timeout`` (in ASGI ``headers``) if sent, else ``default``."""
    raw = next((value for name, value in headers if name == _TIMEOUT_HEADER_BYTES), None)
    if raw is None:
        return default
    value = raw.decode("latin-1")
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (0 < seconds < math.inf):
        raise InvalidRequest(
            f"Header {TIMEOUT_HEADER} must be a positive number of seconds, got {value!r}.", param=TIMEOUT_HEADER
        )
    return seconds
