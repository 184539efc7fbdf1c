"""Cached answers kept in Redis, so every replica behind one Redis answers from one cache.

``MemoryStore``'s contract (``store.py``) on three kinds of key under ``prefix``::

    <prefix>entry:<key>      HASH  v: the entry, m: its model, s: its scope (only with a vector)   PX ttl
    <prefix>model:<model>    ZSET  key -> insertion time (Redis TIME, in microseconds)            PX >= ttl
    <prefix>scope:<scope>    HASH  key -> float32 bytes of the entry's unit vector               PX >= ttl

A put is one Lua script (PUT), run atomically by Redis: it replaces an
entry put again under the same key (dropping it from its old model's index
and its old scope, as ``MemoryStore`` does), stamps the insertion on
Redis's own clock, so replicas whose clocks disagree still agree on which
entry is oldest, and drops the oldest entries past ``max_entries`` with
their vectors. The index and the scope hash live as long as their
longest-lived entry (their expiry only ever moves later), so nothing is
kept forever; an index holds at most ``max_entries`` members, dead ones
included, until a put pushes them out.

An entry's expiry is Redis's own (PX on its hash); a vector cannot expire
by itself, since a field's expiry (HEXPIRE) needs Redis 7.4 and Debian's
server is 7.0. So ``vectors`` (the VECTORS script) keeps a vector only
while its entry lives and still names this scope, and deletes the rest.

Debian's Redis has no vector search either (no RediSearch module, no
vector sets): ``vectors`` returns the scope's whole matrix and the
nearest-neighbour search runs in this process (``ResponseCache._nearest``).
A scope is one conversation so far of one team and model, so it stays small.

The scripts reach keys they compute (the entries they evict), so this is
for one Redis server, not a Redis Cluster.

When Redis cannot be reached a get or a search is a miss and a put is
dropped, with a warning every 10 s at most naming the error's type (never
the URL, which may hold a password): a Redis outage costs cache hits, not
requests.
"""

from __future__ import annotations

import numpy as np
from redis.exceptions import RedisError

from gateway.cache.store import Vectors
from gateway.keys.redis_limits import RedisCalls

# KEYS: the entry, its model's index, its scope's hash (untouched without a vector).
# ARGV: prefix, model, key, value, ttl (ms), max entries, with vector (1/0), scope, vector.
# Returns how many entries were dropped past max entries.
PUT = """
local prefix, model, key, value = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ttl, max_entries, with_vector = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7] == '1'
local scope, vector = ARGV[8], ARGV[9]

local function live_at_least(name, ms)
  if redis.call('PTTL', name) < ms then
    redis.call('PEXPIRE', name, ms)
  end
end

local old_model, old_scope = unpack(redis.call('HMGET', KEYS[1], 'm', 's'))
if old_model then
  if old_model ~= model then
    redis.call('ZREM', prefix .. 'model:' .. old_model, key)
  end
  if old_scope then
    redis.call('HDEL', prefix .. 'scope:' .. old_scope, key)
  end
  redis.call('DEL', KEYS[1])
end

local t = redis.call('TIME')
redis.call('ZADD', KEYS[2], t[1] .. string.format('%06d', t[2]), key)
live_at_least(KEYS[2], ttl)
if with_vector then
  redis.call('HSET', KEYS[1], 'v', value, 'm', model, 's', scope)
  redis.call('HSET', KEYS[3], key, vector)
  live_at_least(KEYS[3], ttl)
else
  redis.call('HSET', KEYS[1], 'v', value, 'm', model)
end
redis.call('PEXPIRE', KEYS[1], ttl)

local over = redis.call('ZCARD', KEYS[2]) - max_entries
if over <= 0 then
  return 0
end
local oldest = redis.call('ZPOPMIN', KEYS[2], over)
for i = 1, #oldest, 2 do
  local entry = prefix .. 'entry:' .. oldest[i]
  local entry_model, entry_scope = unpack(redis.call('HMGET', entry, 'm', 's'))
  -- A key put again under another model belongs to that model now: not this index's to drop.
  if entry_model == model then
    if entry_scope then
      redis.call('HDEL', prefix .. 'scope:' .. entry_scope, oldest[i])
    end
    redis.call('DEL', entry)
  end
end
return over
"""

# KEYS: the scope's hash. ARGV: the entries' key prefix (<prefix>entry:), the scope.
# Returns key, vector, key, vector, ... for the entries that live and still name this scope;
# the other fields (expired, evicted, or put again elsewhere) are deleted.
VECTORS = """
local held = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #held, 2 do
  if redis.call('HGET', ARGV[1] .. held[i], 's') == ARGV[2] then
    live[#live + 1] = held[i]
    live[#live + 1] = held[i + 1]
  else
    redis.call('HDEL', KEYS[1], held[i])
  end
end
return live
"""


def _no_vectors() -> tuple[list[str], Vectors]:
    return [], np.empty((0, 0), dtype=np.float32)


# Seconds a Redis call may take: a cache that hangs must cost a request little more than a miss.
CALL_TIMEOUT = 1.0

class RedisStore:
    """Every replica's cache: ``CacheStore`` in one Redis, keys under ``prefix``."""

    def __init__(self, url: str, prefix: str = "switchyard:cache:") -> None:
        self._calls = RedisCalls(url, "the response cache", timeout=CALL_TIMEOUT)
        self._prefix = prefix
        self._put = self._calls.redis.register_script(PUT)
        self._vectors = self._calls.redis.register_script(VECTORS)

    def entry_key(self, key: str) -> str:
        return f"{self._prefix}entry:{key}"

    def model_key(self, model: str) -> str:
        return f"{self._prefix}model:{model}"

    def scope_key(self, scope: str) -> str:
        return f"{self._prefix}scope:{scope}"

    async def get(self, key: str) -> bytes | None:
        try:
            value: bytes | None = await self._calls.redis.hget(self.entry_key(key), "v")
        except RedisError as error:
            self._calls.warn(error)
            return None
        return value

    async def put(self, model: str, key: str, value: bytes, ttl: float, max_entries: int,
                  scope: str | None = None, vector: bytes | None = None) -> None:  # fmt: skip
        with_vector = scope is not None and vector is not None
        # PX takes whole milliseconds above 0: a shorter ttl still lives one.
        ttl_ms = max(1, round(ttl * 1000))
        keys = [self.entry_key(key), self.model_key(model), self.scope_key(scope or "")]
        args = [self._prefix, model, key, value, ttl_ms, max_entries,
                1 if with_vector else 0, scope or "", vector if with_vector else b""]  # fmt: skip
        try:
            await self._put(keys=keys, args=args)
        except RedisError as error:
            self._calls.warn(error)

    async def vectors(self, scope: str) -> tuple[list[str], Vectors]:
        try:
            reply = await self._vectors(keys=[self.scope_key(scope)], args=[self.entry_key(""), scope])
        except RedisError as error:
            self._calls.warn(error)
            return _no_vectors()
        if not reply:
            return _no_vectors()
        keys = [name.decode() for name in reply[0::2]]
        return keys, np.stack([np.frombuffer(vector, dtype=np.float32) for vector in reply[1::2]])

    async def aclose(self) -> None:
        await self._calls.aclose()
