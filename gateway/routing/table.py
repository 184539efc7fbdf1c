"""The model table: which deployments serve each model name, and what the router has learned about them.

The HTTP routes (models, health, tokenize, metrics) read the table; the
router's loops (router.py) take their deployments from it. A model is
addressed by its public name from ``models:``, or directly as
``provider/upstream-model`` for any configured provider: those entries are
made on first use and kept in a bounded table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from gateway.config import CooldownConfig, GatewayConfig, LocalFirstConfig, RoutingStrategy
from gateway.errors import ModelNotFound
from gateway.routing.balancer import DeploymentState
from gateway.routing.breaker import CircuitBreaker
from gateway.routing.deployment import Deployment
from providers import Provider
from providers.base import LoadsModel, ReportsEngineStats, ServesLoraAdapters, UnsupportedPolicy
from providers.local import LocalProviderConfig

# ``provider/model`` names whose deployment state is kept (oldest dropped first).
MAX_DIRECT_MODELS = 1024
LOCAL_FIRST_DEFAULTS = LocalFirstConfig()


class ModelTable:
    def __init__(
        self, config: GatewayConfig, providers: Mapping[str, Provider], clock: Callable[[], float] = time.monotonic,
        previous: ModelTable | None = None,
    ) -> None:
        """``previous``: the table a configuration reload replaces; what it learned of a deployment that stays is kept."""
        self._cooldown = config.router.cooldown
        self._default_strategy = config.router.routing
        self._clock = clock
        self._providers = dict(providers)
        self._strategies = {name: model.routing or config.router.routing for name, model in config.models.items()}
        self._context_windows = {name: m.context_window for name, m in config.models.items() if m.context_window}
        self._unsupported = {name: m.unsupported_params for name, m in config.models.items()}
        self._local_first = {name: m.local_first for name, m in config.models.items()}
        # The deployments on each engine in this process: their requests in flight are the engine's (local_first).
        self._on_engine: dict[str, list[DeploymentState]] = {}
        # Models made at run time or from lora_modules (add_model: LoRA adapters), each with its parent's name.
        self._parents: dict[str, str] = {}
        kept = previous._kept_states(self._cooldown) if previous is not None else {}
        self._routes = {
            name: tuple(
                self._state(Deployment(d.provider, d.model, self._providers[d.provider]), d.weight, kept.get(name))
                for d in model.deployments
            )
            for name, model in config.models.items()
        }
        # Deployments reached as ``provider/model``, made on first use.
        self._direct: dict[str, tuple[DeploymentState, ...]] = {
            name: states for name, states in previous._direct.items()
            if all(self._providers.get(s.deployment.provider_name) is s.deployment.provider for s in states)
        } if previous is not None else {}  # fmt: skip
        for states in self._direct.values():
            for state in states:
                self._track_engine(state)
        self._add_configured_adapters(config, previous)
        if previous is not None:
            self._keep_added_models(previous)

    @property
    def model_names(self) -> list[str]:
        return list(self._routes)

    @property
    def provider_names(self) -> list[str]:
        return list(self._providers)

    def is_public(self, model: str) -> bool:
        """True for a name under ``models:``, False for ``provider/model`` and unknown names."""
        return model in self._routes

    def states_for(self, model: str) -> tuple[DeploymentState, ...]:
        """The deployments serving ``model`` with their breakers and counters; ModelNotFound if none does."""
        states = self._routes.get(model) or self._direct.get(model)
        if states is not None:
            return states
        provider_name, slash, upstream_model = model.partition("/")
        provider = self._providers.get(provider_name) if slash and upstream_model else None
        if provider is None:
            raise ModelNotFound(model)
        states = (self._state(Deployment(provider_name, upstream_model, provider), 1.0),)
        if len(self._direct) >= MAX_DIRECT_MODELS:  # the names come from clients: keep the table bounded
            evicted = self._direct.pop(next(iter(self._direct)))
            for state in evicted:
                if (on_engine := self._on_engine.get(state.deployment.provider_name)) is not None:
                    on_engine.remove(state)
        self._direct[model] = states
        return states

    def deployments_for(self, model: str) -> tuple[Deployment, ...]:
        """The deployments serving ``model``."""
        return tuple(state.deployment for state in self.states_for(model))

    def deployment_states(self) -> dict[str, tuple[DeploymentState, ...]]:
        """Every model's deployments with their breaker and counters (for /health/ready)."""
        return {**self._routes, **self._direct}

    def strategy(self, model: str) -> RoutingStrategy:
        return self._strategies.get(model, self._default_strategy)

    def unsupported_params(self, model: str) -> UnsupportedPolicy:
        return self._unsupported.get(model, "drop")

    def local_first(self, model: str) -> LocalFirstConfig:
        """How much a model's local engine takes before overflow, under ``routing: local_first``."""
        return self._local_first.get(model) or LOCAL_FIRST_DEFAULTS

    def in_flight_on_engine(self, state: DeploymentState) -> int:
        """Requests in flight on ``state``'s provider for every model it serves (an engine in this process)."""
        return sum(other.in_flight for other in self._on_engine.get(state.deployment.provider_name, (state,)))

    def context_window(self, model: str) -> int | None:
        """The ``context_window`` configured for a public model, if any."""
        return self._context_windows.get(model)

    def engines_here(self) -> list[ReportsEngineStats]:
        """The providers that run an inference engine in this process."""
        return [provider for provider in self._providers.values() if isinstance(provider, ReportsEngineStats)]

    def models_loading_here(self) -> list[LoadsModel]:
        """The providers whose model loads in this process, in config order (readiness waits for them)."""
        return [provider for provider in self._providers.values() if isinstance(provider, LoadsModel)]

    def add_model(self, name: str, deployment: Deployment, parent: str) -> None:
        """Serve ``name`` by ``deployment`` from now on: a model made at run time (a LoRA adapter of ``parent``)."""
        if name in self._routes:
            raise ValueError(f"model {name!r} is already in the table")
        self._routes[name] = (self._state(deployment, 1.0),)
        self._parents[name] = parent

    def remove_model(self, name: str) -> None:
        """Stop serving a model ``add_model`` made (configured models stay)."""
        if self._parents.pop(name, None) is None:
            raise ValueError(f"model {name!r} was not added at run time")
        for state in self._routes.pop(name):
            if (on_engine := self._on_engine.get(state.deployment.provider_name)) is not None:
                on_engine.remove(state)

    def base_model_of(self, provider: Provider | ServesLoraAdapters) -> str:
        """The name clients know ``provider``'s base model by (an adapter's ``parent``): the first configured model
        it serves, else the provider's name."""
        return next(
            (model for model in self.model_names if self.parent_of(model) is None
             and any(deployment.provider is provider for deployment in self.deployments_for(model))),
            provider.name,
        )  # fmt: skip

    def _add_configured_adapters(self, config: GatewayConfig, previous: ModelTable | None) -> None:
        """Each adapter under a local provider's ``lora_modules`` is a model from the start, as ``add_model`` makes
        one (its provider answers 503 loading until the adapter is loaded). A provider a reload kept holds what it
        holds now: ``_keep_added_models`` carries its adapters over, one unloaded since start staying out."""
        for provider_name, entry in config.providers.items():
            provider = self._providers.get(provider_name)
            if not isinstance(entry, LocalProviderConfig) or provider is None:
                continue
            if previous is not None and previous._providers.get(provider_name) is provider:
                continue
            parent = self.base_model_of(provider)
            for module in entry.lora_modules:
                self.add_model(module.name, Deployment(provider_name, module.name, provider), parent)

    def _keep_added_models(self, previous: ModelTable) -> None:
        """Models ``previous`` made at run time stay, while the provider serving them is the same (it holds the adapter)."""
        for name, parent in previous._parents.items():
            states = previous._routes[name]
            if name in self._routes or any(
                self._providers.get(s.deployment.provider_name) is not s.deployment.provider for s in states
            ):
                continue  # the configuration now names it, or its engine was replaced (without the adapter)
            self._routes[name] = states
            self._parents[name] = parent
            for state in states:
                self._track_engine(state)

    def parent_of(self, name: str) -> str | None:
        """The model a run-time model (``add_model``) derives from; None for any other name."""
        return self._parents.get(name)

    def _state(
        self, deployment: Deployment, weight: float, kept: Mapping[Deployment, DeploymentState] | None = None
    ) -> DeploymentState:
        state = kept.get(deployment) if kept else None
        if state is None or state.weight != weight:
            state = DeploymentState(deployment, weight, CircuitBreaker(self._cooldown, self._clock))
        self._track_engine(state)
        return state

    def _track_engine(self, state: DeploymentState) -> None:
        if isinstance(state.deployment.provider, ReportsEngineStats):
            self._on_engine.setdefault(state.deployment.provider_name, []).append(state)

    def _kept_states(self, cooldown: CooldownConfig) -> dict[str, dict[Deployment, DeploymentState]]:
        """Each model's deployment states, for the table that replaces this one (none if the breakers' rules changed).

        A state is taken by the new table only for the same deployment on the
        same provider object (one a reload kept), so its breaker, counters and
        requests in flight stay true while both tables serve.
        """
        if cooldown != self._cooldown:
            return {}
        return {name: {state.deployment: state for state in states} for name, states in self._routes.items()}
