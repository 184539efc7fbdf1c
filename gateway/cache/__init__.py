"""The response cache: a repeated question answered without calling anyone (docs/caching.md).

::

    keys.py          what an answer is filed under: the normalised request, hashed in its team's scope
    store.py         where: this process (MemoryStore), or Redis for every replica (redis_store.py)
    replay.py        a streamed answer folded into one completion; a kept one streamed again
    __init__.py      ResponseCache: the lookup before routing, the keeping after an answer

It keeps the upstream's ``chat.completion`` for a chat payload, before any
door translates it, so one entry answers the chat, Responses and Messages
doors alike (a door's request whose translation lost a field is not
cached: its answer would not be the one asked for). Only deterministic
requests are cached (temperature 0 or a seed) unless the model's config
says ``sampled: true``. A client opts out with ``Cache-Control: no-cache``
(the answer is fetched, then kept), ``no-store`` or ``"cache": false`` in
the body (neither read nor kept).

Semantic mode embeds the last user message with a local embedding model
and answers from the nearest kept entry of the same conversation so far
(same model, team, system prompt, earlier turns and parameters) whose
similarity reaches ``similarity``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import orjson

from gateway.cache.keys import CacheKeys, cache_keys, deterministic
from gateway.cache.store import CacheStore
from gateway.config import CacheConfig
from gateway.errors import InvalidRequest
from providers.wire import Usage

logger = logging.getLogger(__name__)

CacheStatus = Literal["hit", "miss", "bypass"]
# The provider an answer from the cache is credited to, in headers and the ledger.
CACHE_PROVIDER = "cache"


class Embedder(Protocol):
    """Text to unit vectors (``local_engine.embeddings.AsyncEmbedder``); ``model.max_length`` once loaded."""

    @property
    def state(self) -> str: ...

    model: Any

    async def embed(self, inputs: list[str]) -> Any: ...


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A kept answer: the upstream's ``chat.completion``, its usage, and which deployment gave it."""

    answer: dict[str, Any]
    usage: Usage | None
    provider: str
    deployment: str

    def encode(self) -> bytes:
        usage = self.usage
        counts = None if usage is None else [usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens,
                                              usage.cache_write_tokens, usage.reasoning_tokens]  # fmt: skip
        return orjson.dumps({"answer": self.answer, "usage": counts, "provider": self.provider,
                             "deployment": self.deployment, "kept_at": time.time()})  # fmt: skip

    @classmethod
    def decode(cls, data: bytes) -> CachedAnswer:
        held = orjson.loads(data)
        counts = held["usage"]
        usage = None if counts is None else Usage(counts[0], counts[1], False, *counts[2:])
        return cls(held["answer"], usage, held["provider"], held["deployment"])


@dataclass(slots=True)
class CacheLookup:
    """What the cache said about one request: answer from ``hit``, or call and maybe keep."""

    status: CacheStatus
    hit: CachedAnswer | None = None
    keys: CacheKeys | None = None
    vector: bytes | None = None  # semantic: the last user message's embedding, kept beside the answer
    keep: bool = False  # the fresh answer may be kept
    embed_later: bool = False  # semantic mode, but the embedder was not ready: embedded when kept
    similarity: float | None = None  # semantic hit: how close the two last user messages were


BYPASS = CacheLookup("bypass")


class ResponseCache:
    def __init__(self, configs: Mapping[str, CacheConfig], store: CacheStore,
                 embedders: Mapping[str, Embedder] | None = None) -> None:  # fmt: skip
        self._configs = dict(configs)
        self._store = store
        self._embedders = dict(embedders or {})  # by model, for semantic mode
        self._pending: set[asyncio.Task[None]] = set()  # puts in the background, kept referenced

    def covers(self, model: str) -> bool:
        return model in self._configs

    async def lookup(self, model: str, payload: dict[str, Any], owner: str, cache_control: str) -> CacheLookup:
        """Before routing: a kept answer for this request, or what keeping its answer needs."""
        config = self._configs[model]
        directives = {part.strip().lower() for part in cache_control.split(",")}
        if not isinstance(payload.get("cache", True), bool):
            raise InvalidRequest("`cache` must be true or false (false: neither read nor keep this answer).", param="cache")
        if payload.get("cache") is False or "no-store" in directives:
            return BYPASS
        if not (config.sampled or deterministic(payload)):
            return BYPASS
        keys = cache_keys(owner, model, payload)
        later = self._embedder_loading(model)
        if "no-cache" in directives:  # fetched fresh, then kept
            return CacheLookup("bypass", keys=keys, keep=True, vector=await self._embed(model, keys), embed_later=later)
        held = await self._store.get(keys.exact)
        if held is not None:
            return CacheLookup("hit", CachedAnswer.decode(held), keys, similarity=1.0 if config.mode == "semantic" else None)
        vector = await self._embed(model, keys)
        if vector is not None and keys.scope is not None:
            found = await self._nearest(keys.scope, vector, config.similarity)
            if found is not None:
                return CacheLookup("hit", found[0], keys, similarity=found[1])
        return CacheLookup("miss", keys=keys, vector=vector, keep=True, embed_later=later)

    def keep(self, model: str, lookup: CacheLookup, answer: CachedAnswer) -> None:
        """After a fresh answer: keep it, in the background (the client never waits on the store)."""
        if not lookup.keep or lookup.keys is None:
            return
        task = asyncio.ensure_future(self._put(model, lookup, lookup.keys, answer))
        self._pending.add(task)
        task.add_done_callback(self._kept)

    async def _put(self, model: str, lookup: CacheLookup, keys: CacheKeys, answer: CachedAnswer) -> None:
        config = self._configs[model]
        # Not embedded at lookup (the embedder was loading): now, so the answer can be found by meaning too.
        vector = await self._embed(model, keys) if lookup.embed_later else lookup.vector
        await self._store.put(model, keys.exact, answer.encode(), config.ttl, config.max_entries,
                              keys.scope if vector is not None else None, vector)  # fmt: skip

    async def settled(self) -> None:
        """Until every put started has finished (tests, and a clean shutdown)."""
        while self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def aclose(self) -> None:
        await self.settled()
        await self._store.aclose()

    def _kept(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.warning("a cached answer could not be kept: %s: %s", type(error).__name__, error)

    def _embedder_loading(self, model: str) -> bool:
        embedder = self._embedders.get(model)
        return embedder is not None and embedder.state == "loading"

    async def _embed(self, model: str, keys: CacheKeys) -> bytes | None:
        """The last user message's embedding (float32 bytes); None for exact mode, no text, or no embedder ready."""
        embedder = self._embedders.get(model)
        if embedder is None or keys.text is None:
            return None
        if embedder.state != "ready":  # loading (or failed): exact matches only meanwhile
            return None
        try:
            embedded = await embedder.embed([keys.text])
        except Exception as error:  # the embedder's failure is a miss, never the request's failure
            logger.warning("the cache's embedder failed: %s: %s", type(error).__name__, error)
            return None
        if embedded.token_counts[0] >= embedder.model.max_length:
            return None  # cut to the embedder's length: two long texts alike at the start would look the same
        return embedded.vectors[0].numpy().astype(np.float32).tobytes()

    async def _nearest(self, scope: str, vector: bytes, threshold: float) -> tuple[CachedAnswer, float] | None:
        names, matrix = await self._store.vectors(scope)
        query = np.frombuffer(vector, dtype=np.float32)
        if not names or matrix.shape[1] != query.shape[0]:  # none, or kept by another embedder (Redis outlives us)
            return None
        scores = matrix @ query
        best = int(np.argmax(scores))
        if scores[best] < threshold:
            return None
        held = await self._store.get(names[best])  # gone since (expired, evicted): a miss
        return None if held is None else (CachedAnswer.decode(held), float(scores[best]))
