"""A circuit breaker per deployment: skip one that keeps failing, then let one probe decide.

::

    closed --(N failures within `window` s)--> open --(`duration` s)--> half-open
      ^                                          ^                        |
      |                                          +------ probe fails -----+
      +------------------------------- probe succeeds --------------------+

While open, the router skips the deployment; half-open lets exactly one
request through (the probe) and keeps skipping for everyone else until it
answers.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from gateway.config import CooldownConfig


class CircuitBreaker:
    def __init__(self, config: CooldownConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._failures: deque[float] = deque()
        self._open_until: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        if self._open_until is None:
            return "closed"
        return "open" if self._clock() < self._open_until else "half_open"

    def seconds_until_probe(self) -> float:
        """How long until a probe may go (0 when closed or half-open)."""
        if self._open_until is None:
            return 0.0
        return max(0.0, self._open_until - self._clock())

    def try_acquire(self) -> bool:
        """Whether a request may use the deployment now; in half-open state the first caller becomes the probe."""
        if self._open_until is None:
            return True
        if self._probing or self._clock() < self._open_until:
            return False
        self._probing = True
        return True

    def record_success(self) -> None:
        self._failures.clear()
        self._open_until = None
        self._probing = False

    def record_failure(self) -> None:
        now = self._clock()
        if self._open_until is not None:  # the probe failed, or a request that started before opening
            self._open(now)
            return
        failures = self._failures
        failures.append(now)
        while failures and failures[0] <= now - self._config.window:
            failures.popleft()
        if len(failures) >= self._config.failures:
            self._open(now)

    def release(self) -> None:
        """A request ended without a verdict on the deployment (the client left): free the probe slot."""
        self._probing = False

    def _open(self, now: float) -> None:
        self._failures.clear()
        self._open_until = now + self._config.duration
        self._probing = False
