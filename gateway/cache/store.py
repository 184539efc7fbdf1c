"""Where cached answers are kept: this process's memory, or Redis for every replica (``redis_store.py``).

A store holds opaque entries (bytes) under keys, each for ``ttl`` seconds,
at most ``max_entries`` per model (the oldest dropped first), and for
semantic mode each entry's embedding in a *scope* (one model, team and
conversation so far): ``vectors(scope)`` gives the live ones for the
nearest-neighbour search (``semantic.py``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

# An embedding as the stores keep it: float32, unit length.
Vectors = np.ndarray


class CacheStore(Protocol):
    async def get(self, key: str) -> bytes | None:
        """The entry under ``key``, if it is there and younger than its ttl."""
        ...

    async def put(self, model: str, key: str, value: bytes, ttl: float, max_entries: int,
                  scope: str | None = None, vector: bytes | None = None) -> None:  # fmt: skip
        """Keep ``value`` under ``key`` for ``ttl`` s, and ``vector`` (float32 bytes) in ``scope`` beside it.

        Past ``max_entries`` entries for ``model`` the oldest go, with their vectors.
        """
        ...

    async def vectors(self, scope: str) -> tuple[list[str], Vectors]:
        """The keys of ``scope``'s live entries and their embeddings, one row each (n x d); read-only."""
        ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class _Entry:
    value: bytes
    expires: float
    model: str
    scope: str | None


@dataclass(slots=True)
class _Scope:
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    matrix: tuple[list[str], Vectors] | None = None  # built on the first search after a change


class MemoryStore:
    """One replica's cache: per model, the oldest kept dropped first; entries expire lazily, when read."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._by_model: dict[str, OrderedDict[str, None]] = {}  # oldest first
        self._scopes: dict[str, _Scope] = {}

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            self._drop(key)
            return None
        return entry.value

    async def put(self, model: str, key: str, value: bytes, ttl: float, max_entries: int,
                  scope: str | None = None, vector: bytes | None = None) -> None:  # fmt: skip
        if key in self._entries:
            self._drop(key)
        self._entries[key] = _Entry(value, self._clock() + ttl, model, scope)
        order = self._by_model.setdefault(model, OrderedDict())
        order[key] = None
        if scope is not None and vector is not None:
            held = self._scopes.setdefault(scope, _Scope())
            held.vectors[key] = np.frombuffer(vector, dtype=np.float32)
            held.matrix = None
        while len(order) > max_entries:
            self._drop(next(iter(order)))

    async def vectors(self, scope: str) -> tuple[list[str], Vectors]:
        held = self._scopes.get(scope)
        if held is None:
            return [], np.empty((0, 0), dtype=np.float32)
        now = self._clock()
        expired = [key for key in held.vectors if self._entries[key].expires <= now]
        for key in expired:
            self._drop(key)
        if not held.vectors:
            return [], np.empty((0, 0), dtype=np.float32)
        if held.matrix is None:
            held.matrix = (list(held.vectors), np.stack(list(held.vectors.values())))
        return held.matrix

    async def aclose(self) -> None:
        self._entries.clear()
        self._by_model.clear()
        self._scopes.clear()

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        self._by_model[entry.model].pop(key, None)
        if entry.scope is not None and (held := self._scopes.get(entry.scope)) is not None:
            held.vectors.pop(key, None)
            held.matrix = None
            if not held.vectors:
                del self._scopes[entry.scope]
