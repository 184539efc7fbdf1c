"""Per-key limits kept in Redis, so every replica behind one Redis enforces one limit.

Each decision is one Lua script, run atomically by Redis on its own clock
(``TIME``), so replicas whose clocks disagree still share one window. The
script is ``rate_limit.decide`` line for line. Keys are
``switchyard:{name}:requests|tokens|spent``; the braces keep a key's three
numbers in one Redis Cluster slot. TATs expire once they are in the past
(a missing TAT means a full burst); budgets' totals never expire.

When Redis cannot be reached the request is let through and the failure is
logged: a Redis outage should not take every model down with it. Charges
lost that way are bounded by the outage (docs/auth.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Mapping
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from gateway.keys.limits import ALLOWED, WINDOW, Admission, KeyLimitsConfig

logger = logging.getLogger(__name__)

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# KEYS: requests TAT, tokens TAT, spent. ARGV: rpm, tpm, budget (0 = none), window.
# Returns {refused_by, retry_after, requests_remaining, requests_reset, tokens_remaining, tokens_reset, spent};
# numbers as strings, since Redis truncates Lua numbers to integers.
ADMIT = (
    _NOW
    + """
local rpm, tpm, budget, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local eps = 1e-9
local spent = tonumber(redis.call('GET', KEYS[3]) or '0')
if budget > 0 and spent >= budget then
  return {'budget', 'inf', '0', '0', '0', '0', tostring(spent)}
end
local tokens_remaining, tokens_reset = 0, 0
if tpm > 0 then
  local interval = window / tpm
  local used = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), now) - now
  tokens_remaining = math.max(0, math.floor((window - used) / interval + eps))
  tokens_reset = used
  if tokens_remaining < 1 then
    return {'tokens', tostring(used - window + interval), '0', '0', '0', tostring(used), tostring(spent)}
  end
end
local requests_remaining, requests_reset = 0, 0
if rpm > 0 then
  local interval = window / rpm
  local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now) + interval
  if tat - now > window + eps then
    return {'requests', tostring(tat - now - window), '0', tostring(tat - interval - now), '0', '0', tostring(spent)}
  end
  redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
  requests_remaining = math.floor((window - (tat - now)) / interval + eps)
  requests_reset = tat - now
end
return {'', '0', tostring(requests_remaining), tostring(requests_reset),
        tostring(tokens_remaining), tostring(tokens_reset), tostring(spent)}
"""
)

# KEYS: tokens TAT, spent. ARGV: tpm (0 = none), track budget (0/1), tokens, window.
CHARGE = (
    _NOW
    + """
local tpm, budget, tokens, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if tpm > 0 then
  local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now) + tokens * window / tpm
  redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
end
if budget > 0 then
  redis.call('INCRBY', KEYS[2], tokens)
end
return 1
"""
)


def redis_keys(name: str) -> tuple[str, str, str]:
    return f"switchyard:{{{name}}}:requests", f"switchyard:{{{name}}}:tokens", f"switchyard:{{{name}}}:spent"


class RedisCalls:
    """What every Redis-backed state shares: one client, calls sent after the answer, a warning per 10 s at most."""

    def __init__(self, url: str, what: str, timeout: float = 2.0) -> None:
        self.redis = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._what = what  # "rate limits", "dollar budgets": what the warning says is let through
        self._pending: set[asyncio.Task[None]] = set()
        self._last_warning = 0.0

    def in_background(self, call: Coroutine[Any, Any, None]) -> None:
        """Run ``call`` without waiting for it: the answer has gone out, the request must not be held open."""
        task = asyncio.get_running_loop().create_task(call)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def warn(self, error: RedisError) -> None:
        now = time.monotonic()
        if now - self._last_warning > 10:  # one line per 10 s, not one per request
            self._last_warning = now
            logger.warning("Redis unreachable for %s, letting requests through: %s", self._what, type(error).__name__)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait for the calls sent in the background so far."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout)

    async def aclose(self) -> None:
        await self.drain(timeout=5)
        await self.redis.aclose()


class RedisKeyLimits:
    def __init__(self, url: str) -> None:
        self._calls = RedisCalls(url, "rate limits")
        self._admit = self._calls.redis.register_script(ADMIT)
        self._charge = self._calls.redis.register_script(CHARGE)

    async def admit(self, key: KeyLimitsConfig) -> Admission:
        requests, tokens, spent = redis_keys(key.name)
        args = [key.rpm or 0, key.tpm or 0, key.budget_tokens or 0, WINDOW]
        try:
            reply = await self._admit(keys=[requests, tokens, spent], args=args)
        except RedisError as error:
            self._calls.warn(error)
            return ALLOWED
        refused_by, retry_after, req_left, req_reset, tok_left, tok_reset, spent_total = (
            part.decode() if isinstance(part, bytes) else str(part) for part in reply
        )
        budget_remaining = None if key.budget_tokens is None else max(0, key.budget_tokens - int(spent_total))
        return Admission(
            refused_by or None,
            float(retry_after),
            key.rpm,
            int(req_left),
            float(req_reset),
            key.tpm,
            int(tok_left),
            float(tok_reset),
            budget_remaining,
        )

    def charge(self, key: KeyLimitsConfig, tokens: int) -> None:
        if tokens <= 0 or (key.tpm is None and key.budget_tokens is None):
            return
        self._calls.in_background(self._send_charge(key, tokens))

    async def _send_charge(self, key: KeyLimitsConfig, tokens: int) -> None:
        _, token_key, spent_key = redis_keys(key.name)
        args = [key.tpm or 0, 1 if key.budget_tokens is not None else 0, tokens, WINDOW]
        try:
            await self._charge(keys=[token_key, spent_key], args=args)
        except RedisError as error:
            self._calls.warn(error)

    async def seed_spent(self, spent: Mapping[str, int]) -> None:
        try:
            for name, tokens in spent.items():
                await self._calls.redis.set(redis_keys(name)[2], tokens, nx=True)
        except RedisError as error:
            self._calls.warn(error)

    async def aclose(self) -> None:
        await self._calls.aclose()
