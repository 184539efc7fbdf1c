"""Per-key limits: requests and tokens per minute (GCRA), and a token budget.

A limit of ``L`` per minute lets one unit through every ``60 / L`` seconds on
average, with bursts of up to ``L``. The generic cell rate algorithm keeps
one number per limit and key, the theoretical arrival time (TAT)::

    used      = max(TAT, now) - now          seconds of the window taken
    remaining = (60 s - used) / interval     rounded down
    reset     = used                         when the whole burst is back

Requests are taken one at a time before the call. Tokens are only known
after it, so admission asks for one token's room and the answer's usage is
charged afterwards (the TAT may then run past the window: the key is in
debt until it drains). A budget is a plain running total of tokens.

The same arithmetic runs here, in-process, and as one Lua script in Redis
(``redis_limits.py``): one number per limit is what makes it a single
atomic update there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from providers.wire import Header

WINDOW = 60.0  # seconds: limits are per minute
EPSILON = 1e-9
_LIMIT_REQUESTS, _REMAINING_REQUESTS, _RESET_REQUESTS, _LIMIT_TOKENS, _REMAINING_TOKENS, _RESET_TOKENS = (
    name.encode() for name in (Header.LIMIT_REQUESTS, Header.REMAINING_REQUESTS, Header.RESET_REQUESTS,
                               Header.LIMIT_TOKENS, Header.REMAINING_TOKENS, Header.RESET_TOKENS)
)  # fmt: skip
_BUDGET_REMAINING = Header.BUDGET_REMAINING_TOKENS.encode()


@dataclass(frozen=True, slots=True)
class KeyLimitsConfig:
    """What a key may use; None means no limit of that kind."""

    name: str
    rpm: int | None = None
    tpm: int | None = None
    budget_tokens: int | None = None

    @property
    def limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None or self.budget_tokens is not None


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer to "may this key send a request now?", with what is left of each limit."""

    refused_by: str | None  # None, "requests", "tokens" or "budget"
    retry_after: float  # seconds until it would be allowed (0 when allowed; inf for a spent budget)
    rpm: int | None = None
    requests_remaining: int = 0
    requests_reset: float = 0.0
    tpm: int | None = None
    tokens_remaining: int = 0
    tokens_reset: float = 0.0
    budget_remaining: int | None = None

    @property
    def allowed(self) -> bool:
        return self.refused_by is None

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """OpenAI's rate-limit headers for the limits this key has, ready for the response."""
        headers = []
        if self.rpm is not None:
            headers += [
                (_LIMIT_REQUESTS, b"%d" % self.rpm),
                (_REMAINING_REQUESTS, b"%d" % self.requests_remaining),
                (_RESET_REQUESTS, format_duration(self.requests_reset).encode()),
            ]
        if self.tpm is not None:
            headers += [
                (_LIMIT_TOKENS, b"%d" % self.tpm),
                (_REMAINING_TOKENS, b"%d" % self.tokens_remaining),
                (_RESET_TOKENS, format_duration(self.tokens_reset).encode()),
            ]
        if self.budget_remaining is not None:
            headers.append((_BUDGET_REMAINING, b"%d" % self.budget_remaining))
        return headers

    def headers(self) -> dict[str, str]:
        return {name.decode(): value.decode() for name, value in self.raw_headers()}


ALLOWED = Admission(None, 0.0)


class KeyLimits(Protocol):
    """Where the limits' state lives: this process, or Redis for several replicas."""

    async def admit(self, key: KeyLimitsConfig) -> Admission:
        """Take one request from ``key``'s limits, or say which one refuses and for how long."""
        ...

    def charge(self, key: KeyLimitsConfig, tokens: int) -> None:
        """Count a finished request's tokens against ``key``'s tpm and budget (never blocks)."""
        ...

    async def seed_spent(self, spent: Mapping[str, int]) -> None:
        """Start budgets from the ledger's totals per key name (kept where a total already exists)."""
        ...

    async def aclose(self) -> None: ...


def decide(
    key: KeyLimitsConfig, now: float, request_tat: float, token_tat: float, spent: int
) -> tuple[Admission, float]:
    """The admission for ``key`` and the request TAT to store (unchanged when refused).

    ``redis_limits.ADMIT`` is this function in Lua; keep the two the same.
    """
    budget_remaining = None
    if key.budget_tokens is not None:
        budget_remaining = max(0, key.budget_tokens - spent)
        if budget_remaining == 0:
            return Admission("budget", math.inf, budget_remaining=0), request_tat
    tokens_remaining, tokens_reset = 0, 0.0
    if key.tpm is not None:
        interval = WINDOW / key.tpm
        used = max(token_tat, now) - now
        tokens_remaining = max(0, math.floor((WINDOW - used) / interval + EPSILON))
        tokens_reset = used
        if tokens_remaining < 1:
            retry = used - WINDOW + interval
            return Admission("tokens", retry, tpm=key.tpm, tokens_reset=used), request_tat
    requests_remaining, requests_reset = 0, 0.0
    if key.rpm is not None:
        interval = WINDOW / key.rpm
        tat = max(request_tat, now) + interval
        if tat - now > WINDOW + EPSILON:
            retry = tat - now - WINDOW
            refusal = Admission("requests", retry, rpm=key.rpm, requests_reset=tat - interval - now)
            return refusal, request_tat
        request_tat = tat
        requests_remaining = math.floor((WINDOW - (tat - now)) / interval + EPSILON)
        requests_reset = tat - now
    admission = Admission(
        None,
        0.0,
        key.rpm,
        requests_remaining,
        requests_reset,
        key.tpm,
        tokens_remaining,
        tokens_reset,
        budget_remaining,
    )
    return admission, request_tat


def charged_token_tat(tpm: int, now: float, token_tat: float, tokens: int) -> float:
    """The token TAT after spending ``tokens``; it may run past the window (debt)."""
    return max(token_tat, now) + tokens * WINDOW / tpm


class LocalKeyLimits:
    """Limits kept in this process: exact, and lost on restart (budgets are re-read from the ledger)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._request_tat: dict[str, float] = {}
        self._token_tat: dict[str, float] = {}
        self._spent: dict[str, int] = {}

    async def admit(self, key: KeyLimitsConfig) -> Admission:
        return self.admit_now(key)

    def admit_now(self, key: KeyLimitsConfig) -> Admission:
        now = self._clock()
        name = key.name
        admission, tat = decide(
            key, now, self._request_tat.get(name, now), self._token_tat.get(name, now), self._spent.get(name, 0)
        )
        if admission.allowed and key.rpm is not None:
            self._request_tat[name] = tat
        return admission

    def charge(self, key: KeyLimitsConfig, tokens: int) -> None:
        name = key.name
        if key.tpm is not None:
            now = self._clock()
            self._token_tat[name] = charged_token_tat(key.tpm, now, self._token_tat.get(name, now), tokens)
        if key.budget_tokens is not None:
            self._spent[name] = self._spent.get(name, 0) + tokens

    async def seed_spent(self, spent: Mapping[str, int]) -> None:
        for name, tokens in spent.items():
            self._spent.setdefault(name, tokens)

    async def aclose(self) -> None:
        pass


def format_duration(seconds: float) -> str:
    """OpenAI's duration style: ``20ms``, ``1s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"
