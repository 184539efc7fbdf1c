"""Shadow traffic: a sampled copy of a model's requests sent to another model once the real answer is out.

``shadow: [{model: other-model, sample: 0.1}]`` on a model. After a request
of that model was answered (by an upstream, not the cache), each shadow
model is drawn with its ``sample``; a drawn one gets the same chat payload,
unstreamed and without fallbacks, through the router, in the background:
the client's answer has gone out by then and never waits on it. The
shadow answer is recorded in the ledger beside the real one (``shadow_of``:
the real request's id), priced, never charged to the key's limits or
budgets, with its cosine similarity to the real answer's text from a local
embedding model (when one is configured).

At most ``MAX_IN_FLIGHT`` shadow requests run at once; past that, copies
are skipped (``switchyard_shadow_skipped_total``), so a slow shadow model
can never pile up work behind real traffic.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from gateway.cache import Embedder
from gateway.config import ShadowConfig
from gateway.keys.accounting import CLIENT_CLOSED_REQUEST, Accounting, Outcome
from gateway.routing.router import Router
from providers import Endpoint, OpenAIError

logger = logging.getLogger(__name__)

MAX_IN_FLIGHT = 16
# A copy whose client set no max_tokens gets twice the real answer's completion tokens, and at least this.
MIN_SHADOW_TOKENS = 64


class ShadowTraffic:
    def __init__(
        self, shadows: Mapping[str, Sequence[ShadowConfig]], router: Router, accounting: Accounting,
        embedder: Embedder | None = None, rng: random.Random | None = None,
    ) -> None:  # fmt: skip
        self._shadows = {model: tuple(configs) for model, configs in shadows.items() if configs}
        self._router = router
        self._accounting = accounting
        self._embedder = embedder
        self._rng = rng or random.Random()
        self._tasks: set[asyncio.Task[None]] = set()

    def drawn(self, model: object) -> tuple[str, ...]:
        """The shadow models this request of ``model`` is copied to (drawn now, each with its sample)."""
        configs = self._shadows.get(model) if isinstance(model, str) else None
        if not configs:
            return ()
        return tuple(config.model for config in configs if self._rng.random() < config.sample)

    def send(self, models: tuple[str, ...], payload: dict[str, Any], real: Outcome, real_text: str | None) -> None:
        """Copy ``payload`` to each of ``models``, in the background; ``real_text``: the real answer, to compare."""
        for model in models:
            if len(self._tasks) >= MAX_IN_FLIGHT:
                self._accounting.shadow_skipped(model)
                continue
            task = asyncio.ensure_future(self._shadow(model, payload, real, real_text))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def settled(self) -> None:
        """Until every shadow request started has been recorded (tests, and a clean shutdown)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.settled()

    async def _shadow(self, model: str, payload: dict[str, Any], real: Outcome, real_text: str | None) -> None:
        started = time.perf_counter()
        outcome = Outcome(f"{real.request_id}-shadow-{model}", real.key)
        outcome.model, outcome.shadow_of = model, real.request_id
        copy = {name: value for name, value in payload.items() if name not in ("stream", "stream_options")}
        copy.update(model=model, fallbacks=[])  # the shadow model's own answer, or its failure
        if not any(name in payload for name in ("max_tokens", "max_completion_tokens")) and real.usage is not None:
            # Bounded by the real answer's length: a rambling shadow must not hold its engine for minutes.
            copy["max_tokens"] = max(MIN_SHADOW_TOKENS, 2 * real.usage.completion_tokens)
        try:
            routed = await self._router.send(
                Endpoint.CHAT, copy, self._router.deadline(self._router.default_timeout), outcome.request_id, outcome.trace
            )
            outcome.routed(routed, routed.answer.status)
            outcome.usage = routed.answer.usage
            outcome.similarity = await self._similarity(real_text, answer_text(routed.answer.body))
        except OpenAIError as error:
            outcome.status = error.status_code
        except asyncio.CancelledError:  # the gateway is stopping: counted as a request cut short
            outcome.status = CLIENT_CLOSED_REQUEST
            raise
        except Exception as error:  # a bug here must not reach the event loop's exception handler
            logger.error("a shadow request to %s failed: %s: %s", model, type(error).__name__, error)
        finally:
            self._accounting.finish_shadow(outcome, started)

    async def _similarity(self, real: str | None, shadow: str | None) -> float | None:
        """Cosine similarity of the two answers' embeddings; None without both texts or an embedder ready."""
        embedder = self._embedder
        if real is None or shadow is None or embedder is None or embedder.state != "ready":
            return None
        embedded = await embedder.embed([real, shadow])
        vectors = embedded.vectors.numpy().astype(np.float32)
        return round(float(vectors[0] @ vectors[1]), 6)


def answer_text(body: bytes | dict[str, Any]) -> str | None:
    """The first choice's text of a ``chat.completion`` (its tool calls' arguments if it has no text)."""
    try:
        answer = orjson.loads(body) if isinstance(body, bytes) else body
        message = answer["choices"][0]["message"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return None
    if message.get("content"):
        return str(message["content"])
    calls = message.get("tool_calls") or []
    return "\n".join(f"{c['function']['name']}({c['function']['arguments']})" for c in calls) or None
