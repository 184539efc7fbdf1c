"""Which models to try after a model fails, by what went wrong.

Three policies, each a chain per model in ``providers.yaml``:

- ``fallbacks``: rate limits, 5xx, timeouts, connection errors (the error
  class has ``fallback_allowed``);
- ``context_window_fallbacks``: the prompt does not fit the model;
- ``content_policy_fallbacks``: the provider's content filter refused it.

A chain is followed through: if ``a: [b]`` and ``b: [c]``, a failing ``a``
tries ``b`` then ``c``. Chains are checked for loops when the config loads,
so following them always ends. ``default_fallbacks`` is the general chain
of a model that has none of its own. A client may replace the requested
model's general chain with ``"fallbacks": [...]`` in the body, or turn every
fallback off with ``"fallbacks": []`` or ``"disable_fallbacks": true``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.config import GatewayConfig
from gateway.errors import InvalidRequest
from providers.errors import ContentPolicyViolation, ContextWindowExceeded, OpenAIError

# Body fields for the gateway itself: read here, never sent upstream.
ROUTING_FIELDS = frozenset({"fallbacks", "disable_fallbacks", "stream_resume", "cache"})


def without_routing_fields(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` as the upstream should see it (a copy only when it has routing fields)."""
    if ROUTING_FIELDS.isdisjoint(payload):
        return payload
    return {name: value for name, value in payload.items() if name not in ROUTING_FIELDS}


@dataclass(frozen=True, slots=True)
class FallbackPlan:
    """What one request may fall back to."""

    general: tuple[str, ...]
    enabled: bool = True


class FallbackPolicy:
    def __init__(self, config: GatewayConfig) -> None:
        self._models = frozenset(config.models)
        self._general = _followed(config.fallbacks)
        self._context = _followed(config.context_window_fallbacks)
        self._content = _followed(config.content_policy_fallbacks)
        self._default = tuple(config.default_fallbacks)

    def plan(self, model: str, payload: dict[str, Any]) -> FallbackPlan:
        """The plan for a request to ``model`` from the body's routing fields (the body is not changed)."""
        if payload.get("stream_resume"):
            raise InvalidRequest(
                "`stream_resume` (continuing a broken stream on another deployment) is not supported yet.",
                param="stream_resume",
                code="unsupported_parameter",
            )
        requested = payload.get("fallbacks")
        disabled = payload.get("disable_fallbacks", False)
        if not isinstance(disabled, bool):
            raise InvalidRequest("`disable_fallbacks` must be a boolean.", param="disable_fallbacks")
        if disabled or requested == []:
            return FallbackPlan((), enabled=False)
        if requested is None:
            general = self._general.get(model)
            if general is None:
                general = tuple(m for m in self._default if m != model)
            return FallbackPlan(general)
        if not isinstance(requested, list):
            raise InvalidRequest("`fallbacks` must be a list of model names.", param="fallbacks")
        for index, name in enumerate(requested):
            if not isinstance(name, str) or name not in self._models:
                raise InvalidRequest(
                    f"`fallbacks[{index}]`: {name!r} is not a model on this gateway.", param=f"fallbacks[{index}]"
                )
        return FallbackPlan(tuple(dict.fromkeys(requested)))

    def after(self, error: OpenAIError, model: str, plan: FallbackPlan) -> tuple[str, ...] | None:
        """The chain to switch to when ``model`` failed with ``error``; None: the general chain goes on (if the error allows)."""
        if not plan.enabled:
            return ()
        if isinstance(error, ContextWindowExceeded):
            return self._context.get(model, ())
        if isinstance(error, ContentPolicyViolation):
            return self._content.get(model, ())
        return None


def _followed(chains: Mapping[str, list[str]]) -> dict[str, tuple[str, ...]]:
    """Each model's chain with the fallbacks' own chains spliced in after them (loops were rejected at load)."""

    def walk(model: str) -> list[str]:
        out: list[str] = []
        for fallback in chains.get(model, ()):
            out += [fallback, *walk(fallback)]
        return out

    return {model: tuple(dict.fromkeys(m for m in walk(model) if m != model)) for model in chains}
