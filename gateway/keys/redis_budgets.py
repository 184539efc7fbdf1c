"""Budgets in dollars kept in Redis, so every replica behind one Redis holds one budget.

``budgets.LocalBudgetBook``'s arithmetic in two Lua scripts, each run
atomically by Redis: RESERVE checks and reserves on all of a request's
budgets at once, SETTLE moves a reservation to what was spent. Each
(account, period) is a hash ``switchyard:{budget}:<account>:<period>`` with
the fields ``spent`` and ``reserved`` (HINCRBYFLOAT). The braces put every
budget in one Redis Cluster slot, as a script over several keys needs. A
period's hash expires an hour past the period's end, so that requests
admitted in it still settle there; a total budget's never expires.

The period is named from this replica's clock (the key is chosen before the
script runs): replicas whose clocks disagree by a second disagree on a
midnight by as much.

When Redis cannot be reached the request is let through, holding nothing,
and the failure is logged, as ``redis_limits.py`` does: a Redis outage
should not take every model down with it (docs/auth.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from zoneinfo import ZoneInfo

from redis.exceptions import RedisError

from gateway.keys.budgets import (
    EPSILON_USD,
    DollarBudget,
    Refusal,
    Reservation,
    period_of,
    resets_at,
)
from gateway.keys.redis_limits import RedisCalls

EXPIRY_MARGIN = 3600.0  # seconds a period's hash outlives the period: its last requests settle there

# KEYS: each budget's hash. ARGV: usd, epsilon, then per key: limit, expire at (unix seconds; 0 = never).
# Returns {refused (1-based index into KEYS, 0 = admitted), least left}; numbers as strings, since Redis
# truncates Lua numbers to integers.
RESERVE = """
local usd, eps = tonumber(ARGV[1]), tonumber(ARGV[2])
local least = math.huge
for i, key in ipairs(KEYS) do
  local spent = tonumber(redis.call('HGET', key, 'spent') or '0')
  local reserved = tonumber(redis.call('HGET', key, 'reserved') or '0')
  local left = tonumber(ARGV[1 + 2 * i]) - spent - reserved - usd
  if left < -eps then
    return {tostring(i), '0'}
  end
  least = math.min(least, left)
end
for i, key in ipairs(KEYS) do
  redis.call('HINCRBYFLOAT', key, 'reserved', ARGV[1])
  local expire_at = tonumber(ARGV[2 + 2 * i])
  if expire_at > 0 then
    redis.call('EXPIREAT', key, expire_at)
  end
end
return {'0', tostring(least)}
"""

# KEYS: the hashes the reservation holds. ARGV: its usd, the actual cost.
# A hash that has expired belongs to a period long gone: nothing is settled there.
SETTLE = """
local usd = tonumber(ARGV[1])
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    if tonumber(redis.call('HGET', key, 'reserved') or '0') <= usd then
      redis.call('HSET', key, 'reserved', '0')
    else
      redis.call('HINCRBYFLOAT', key, 'reserved', '-' .. ARGV[1])
    end
    redis.call('HINCRBYFLOAT', key, 'spent', ARGV[2])
  end
end
return 1
"""

# KEYS: one hash. ARGV: spent, expire at (0 = never). Another replica may have made it already: kept then.
SEED = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'spent', ARGV[1], 'reserved', '0')
local expire_at = tonumber(ARGV[2])
if expire_at > 0 then
  redis.call('EXPIREAT', KEYS[1], expire_at)
end
return 1
"""


def redis_key(account: str, period: str) -> str:
    return f"switchyard:{{budget}}:{account}:{period}"


class RedisBudgetBook:
    def __init__(self, url: str, timezone: ZoneInfo, clock: Callable[[], float] = time.time) -> None:
        self.timezone = timezone
        self.clock = clock
        self._calls = RedisCalls(url, "dollar budgets")
        self._reserve = self._calls.redis.register_script(RESERVE)
        self._settle = self._calls.redis.register_script(SETTLE)
        self._seed = self._calls.redis.register_script(SEED)

    async def reserve(self, budgets: Sequence[DollarBudget], usd: float) -> Reservation | Refusal:
        now = self.clock()
        held = [(budget.account, period_of(budget.period, now, self.timezone)) for budget in budgets]
        args: list[str | float] = [repr(usd), repr(EPSILON_USD)]
        for budget in budgets:
            args += [repr(budget.limit_usd), self._expire_at(budget, now)]
        try:
            reply = await self._reserve(keys=[redis_key(*key) for key in held], args=args)
        except RedisError as error:
            self._calls.warn(error)
            return Reservation((), usd, math.inf)  # let through, holding nothing: settling it changes nothing
        refused, least = (part.decode() if isinstance(part, bytes) else str(part) for part in reply)
        if refused != "0":
            budget = budgets[int(refused) - 1]
            return Refusal(budget, resets_at(budget.period, now, self.timezone))
        return Reservation(tuple(held), usd, float(least))

    def settle(self, reservation: Reservation, actual_usd: float) -> None:
        if not reservation.held:
            return
        self._calls.in_background(self._send_settle(reservation, actual_usd))

    async def _send_settle(self, reservation: Reservation, actual_usd: float) -> None:
        keys = [redis_key(*key) for key in reservation.held]
        try:
            await self._settle(keys=keys, args=[repr(reservation.usd), repr(actual_usd)])
        except RedisError as error:
            self._calls.warn(error)

    async def seed(self, spent: Mapping[tuple[str, str], float]) -> None:
        """Only where no replica has made the hash yet; ``spent`` holds each budget's current period."""
        # The current period ends within a month (the longest); the first reservation sets its exact end.
        expire_at = math.ceil(self.clock() + 31 * 86400 + EXPIRY_MARGIN)
        try:
            for (account, period), usd in spent.items():
                args = [repr(usd), 0 if period == "total" else expire_at]
                await self._seed(keys=[redis_key(account, period)], args=args)
        except RedisError as error:
            self._calls.warn(error)

    async def aclose(self) -> None:
        await self._calls.aclose()

    def _expire_at(self, budget: DollarBudget, now: float) -> int:
        ends = resets_at(budget.period, now, self.timezone)
        return 0 if ends is None else math.ceil(ends + EXPIRY_MARGIN)
