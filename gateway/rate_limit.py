"""Requests-per-minute limits, with the generic cell rate algorithm (GCRA).

A limit of ``rpm`` lets one request through every ``60 / rpm`` seconds on
average, with bursts of up to ``rpm`` requests. The state per key is one
number, the theoretical arrival time (TAT) of the next request::

    allow   if  max(TAT, now) + interval - now <= 60 s     then TAT += interval
    remaining = (60 s - (TAT - now)) / interval, rounded down
    reset     = TAT - now: when the full burst is available again

One number per key is what makes the same algorithm a single atomic update
when the state moves to a shared store for several replicas.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

WINDOW = 60.0  # seconds: limits are per minute


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset: float  # seconds until the whole burst is available again
    retry_after: float  # seconds until one more request would be allowed (0 when allowed)

    def headers(self) -> dict[str, str]:
        """OpenAI's rate-limit headers for this decision."""
        return {
            "x-ratelimit-limit-requests": str(self.limit),
            "x-ratelimit-remaining-requests": str(self.remaining),
            "x-ratelimit-reset-requests": format_duration(self.reset),
        }


class RequestLimiter:
    """In-process GCRA per key name."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tat: dict[str, float] = {}

    def acquire(self, key: str, rpm: int) -> Decision:
        now = self._clock()
        interval = WINDOW / rpm
        tat = max(self._tat.get(key, now), now)
        new_tat = tat + interval
        if new_tat - now > WINDOW + 1e-9:
            wait = new_tat - now - WINDOW
            return Decision(False, rpm, 0, tat - now, wait)
        self._tat[key] = new_tat
        remaining = math.floor((WINDOW - (new_tat - now)) / interval + 1e-9)
        return Decision(True, rpm, remaining, new_tat - now, 0.0)


def format_duration(seconds: float) -> str:
    """OpenAI's duration style: ``20ms``, ``1s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"
