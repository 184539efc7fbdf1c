"""RedisStore against a real Redis, and one contract it and MemoryStore both keep.

Each test's store has a prefix of its own, so tests sharing the session's
Redis never see each other's entries.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np
import pytest
import redis.asyncio as redis

from gateway.cache.redis_store import RedisStore
from gateway.cache.store import CacheStore, MemoryStore
from tests.support.services import free_port

MODEL = "gpt-test"
LONG = 30.0  # a ttl no test outlives
SHORT = 0.3


def unit(*values: float) -> bytes:
    """A unit vector's float32 bytes, as the cache keeps an embedding."""
    vector = np.array(values, dtype=np.float32)
    return (vector / np.linalg.norm(vector)).astype(np.float32).tobytes()


def rows(held: tuple[list[str], np.ndarray]) -> dict[str, bytes]:
    """``vectors``' answer as key -> its row's bytes; the order of rows is the store's own."""
    keys, matrix = held
    assert matrix.dtype == np.float32 and matrix.shape[0] == len(keys)
    return {key: matrix[index].tobytes() for index, key in enumerate(keys)}


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"not within {timeout} s"
        await asyncio.sleep(0.05)


def new_store(redis_url: str) -> RedisStore:
    return RedisStore(redis_url, prefix=f"test:{uuid.uuid4().hex}:")


@pytest.fixture()
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    held = new_store(redis_url)
    yield held
    await held.aclose()


@pytest.fixture()
async def raw(redis_url: str) -> AsyncIterator[redis.Redis]:
    """A client of its own, to look at what the store left in Redis."""
    client = redis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def any_store(request: pytest.FixtureRequest) -> AsyncIterator[CacheStore]:
    if request.param == "memory":
        held: CacheStore = MemoryStore(time.monotonic)
    else:
        held = new_store(request.getfixturevalue("redis_url"))
    yield held
    await held.aclose()


async def test_memory_and_redis_keep_one_contract(any_store: CacheStore) -> None:
    store = any_store
    assert await store.get("nothing") is None
    keys, matrix = await store.vectors("no-such-scope")
    assert keys == [] and matrix.shape == (0, 0) and matrix.dtype == np.float32

    await store.put(MODEL, "a", b"answer a", LONG, 3, "s", unit(1, 0, 0))
    await store.put(MODEL, "b", b"answer b", LONG, 3, "s", unit(0, 1, 0))
    await store.put(MODEL, "c", b"answer c", LONG, 3)  # exact mode: no scope, no vector
    assert [await store.get(key) for key in "abc"] == [b"answer a", b"answer b", b"answer c"]
    assert rows(await store.vectors("s")) == {"a": unit(1, 0, 0), "b": unit(0, 1, 0)}

    # Put again: the new value and vector replace the old, and the key is the newest.
    await store.put(MODEL, "a", b"answer a2", LONG, 3, "s", unit(1, 1, 0))
    assert await store.get("a") == b"answer a2"
    assert rows(await store.vectors("s")) == {"a": unit(1, 1, 0), "b": unit(0, 1, 0)}

    # Oldest first is now b, c, a: a fourth entry drops b, with its vector.
    await store.put(MODEL, "d", b"answer d", LONG, 3)
    assert await store.get("b") is None
    assert rows(await store.vectors("s")) == {"a": unit(1, 1, 0)}

    # A key put again under another model is that model's: it leaves this one's count and evictions.
    await store.put("other", "a", b"other a", LONG, 3)
    assert (await store.vectors("s"))[0] == []  # the new entry has no vector
    await store.put(MODEL, "e", b"e", LONG, 3)  # c, d, e: three, none dropped
    assert await store.get("c") == b"answer c"
    for key in "fg":
        await store.put(MODEL, key, key.encode(), LONG, 3)
    assert [await store.get(key) for key in "acdefg"] == [b"other a", None, None, b"e", b"f", b"g"]

    # Expiry: the short entry goes, with its vector; the long one in the same scope stays.
    await store.put("m3", "short", b"brief", SHORT, 2, "s2", unit(0, 0, 1))
    await store.put("m3", "long", b"lasting", LONG, 2, "s2", unit(1, 0, 1))
    assert await store.get("short") == b"brief"

    async def short_gone() -> bool:
        return await store.get("short") is None

    await eventually(short_gone)
    # The expired key put again under another model and scope, before any search: that model's and scope's alone.
    await store.put("m4", "short", b"again", LONG, 2, "s3", unit(1, 1, 1))
    assert rows(await store.vectors("s2")) == {"long": unit(1, 0, 1)}
    assert rows(await store.vectors("s3")) == {"short": unit(1, 1, 1)}
    for key in "xy":  # m3 past its two: long goes, short is m4's now
        await store.put("m3", key, key.encode(), LONG, 2)
    assert [await store.get(key) for key in ("long", "short", "x", "y")] == [None, b"again", b"x", b"y"]

async def test_an_entry_lives_its_ttl_and_its_stale_vector_is_cleared(store: RedisStore, raw: redis.Redis) -> None:
    await store.put(MODEL, "brief", b"soon gone", SHORT, 10, "scope", unit(1, 0))
    await store.put(MODEL, "lasting", b"stays", LONG, 10, "scope", unit(0, 1))
    assert await store.get("brief") == b"soon gone"
    assert 0 < await raw.pttl(store.entry_key("brief")) <= SHORT * 1000

    async def brief_gone() -> bool:
        return await store.get("brief") is None

    await eventually(brief_gone)
    assert await raw.hlen(store.scope_key("scope")) == 2  # the dead vector waits for the next search...
    keys, matrix = await store.vectors("scope")
    assert keys == ["lasting"] and matrix.shape == (1, 2)
    assert await raw.hkeys(store.scope_key("scope")) == [b"lasting"]  # ... which clears it


async def test_nothing_is_kept_forever(store: RedisStore, raw: redis.Redis) -> None:
    await store.put(MODEL, "k", b"v", LONG, 10, "scope", unit(1, 0))
    for name in (store.entry_key("k"), store.model_key(MODEL), store.scope_key("scope")):
        assert 0 < await raw.pttl(name) <= LONG * 1000, name
    # A shorter ttl later never cuts the index or the scope short of an entry still in them.
    await store.put(MODEL, "brief", b"v", SHORT, 10, "scope", unit(0, 1))
    assert await raw.pttl(store.model_key(MODEL)) > SHORT * 1000
    assert await raw.pttl(store.scope_key("scope")) > SHORT * 1000


async def test_max_entries_drops_the_oldest_with_its_vector(store: RedisStore, raw: redis.Redis) -> None:
    for index in range(5):
        await store.put(MODEL, f"k{index}", f"v{index}".encode(), LONG, 3, "scope", unit(1, index))
    assert [await store.get(f"k{index}") for index in range(5)] == [None, None, b"v2", b"v3", b"v4"]
    assert await raw.zrange(store.model_key(MODEL), 0, -1) == [b"k2", b"k3", b"k4"]
    assert sorted(await raw.hkeys(store.scope_key("scope"))) == [b"k2", b"k3", b"k4"]
    assert await raw.exists(store.entry_key("k0"), store.entry_key("k1")) == 0
    await store.put("another", "x", b"x", LONG, 1)  # limits are per model
    assert await store.get("k2") == b"v2"


async def test_vectors_are_one_row_per_live_entry_aligned_with_its_key(store: RedisStore) -> None:
    put = {f"k{index}": unit(index + 1, 2, 3, 4) for index in range(4)}
    for key, vector in put.items():
        await store.put(MODEL, key, b"v", LONG, 10, "scope", vector)
    await store.put(MODEL, "elsewhere", b"v", LONG, 10, "other-scope", unit(1, 1, 1, 1))
    keys, matrix = await store.vectors("scope")
    assert matrix.shape == (4, 4) and matrix.dtype == np.float32
    assert sorted(keys) == sorted(put)
    for index, key in enumerate(keys):
        np.testing.assert_array_equal(matrix[index], np.frombuffer(put[key], dtype=np.float32))
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, rtol=1e-6)


async def test_two_replicas_share_one_cache(redis_url: str) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    one, two = RedisStore(redis_url, prefix), RedisStore(redis_url, prefix)
    try:
        await one.put(MODEL, "asked-on-one", b"answer", LONG, 2, "scope", unit(1, 0))
        assert await two.get("asked-on-one") == b"answer"
        await two.put(MODEL, "asked-on-two", b"answer 2", LONG, 2, "scope", unit(0, 1))
        assert rows(await one.vectors("scope")) == {"asked-on-one": unit(1, 0), "asked-on-two": unit(0, 1)}
        await two.put(MODEL, "third", b"answer 3", LONG, 2)  # one limit for both: the first entry goes
        assert await one.get("asked-on-one") is None
        assert list(rows(await one.vectors("scope"))) == ["asked-on-two"]
    finally:
        await one.aclose()
        await two.aclose()


async def test_a_put_storm_on_two_replicas_leaves_exactly_max_entries(redis_url: str, raw: redis.Redis) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    replicas = [RedisStore(redis_url, prefix), RedisStore(redis_url, prefix)]
    try:
        await asyncio.gather(*(
            replicas[index % 2].put(MODEL, f"k{index}", b"v", LONG, 50, "scope", unit(1, index))
            for index in range(200)
        ))  # fmt: skip
        indexed = await raw.zrange(replicas[0].model_key(MODEL), 0, -1)
        live = [f"k{index}" for index in range(200) if await replicas[index % 2].get(f"k{index}") is not None]
        keys, matrix = await replicas[1].vectors("scope")
        assert len(indexed) == 50 and len(live) == 50 and matrix.shape == (50, 2)
        assert {name.decode() for name in indexed} == set(live) == set(keys)
    finally:
        for replica in replicas:
            await replica.aclose()


async def test_an_unreachable_redis_is_a_miss_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    store = RedisStore(f"redis://:hunter2@127.0.0.1:{free_port()}/0")  # a port bound, then closed
    with caplog.at_level(logging.WARNING):
        assert await store.get("k") is None
        await store.put(MODEL, "k", b"v", LONG, 10, "scope", unit(1, 0))
        keys, matrix = await store.vectors("scope")
        await store.aclose()
    assert keys == [] and matrix.shape == (0, 0) and matrix.dtype == np.float32
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1  # throttled: one line, not one per call
    assert "response cache" in caplog.text and "hunter2" not in caplog.text and "127.0.0.1" not in caplog.text
