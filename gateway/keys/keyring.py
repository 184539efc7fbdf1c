"""Client API keys: who is calling, which models they may use, how often.

Keys come from ``server.api_keys``: the key itself (usually ``${VAR}``) or
its sha256. Either way only the sha256 is kept in memory, and a presented
key is hashed and looked up, so no key is compared character by character.
A key is accepted from ``Authorization: Bearer <key>`` (the OpenAI SDKs),
``api-key: <key>`` (Azure-style clients) or ``x-api-key: <key>`` (Anthropic's
SDKs and Claude Code). With no ``api_keys`` configured
the gateway is open, and says so at start. ``admin_keys`` may call every
model without limits and are the only keys that read ``/v1/usage``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.config import ADMIN_KEY_NAME, ServerConfig
from gateway.errors import InvalidApiKey, ModelNotAllowed
from gateway.http.doors import error_body_for
from gateway.http.responses import send_error
from gateway.keys.budgets import DollarBudget
from gateway.keys.limits import KeyLimitsConfig

# Where ApiKeyMiddleware leaves the identified key: scope["state"][SCOPE_KEY].
SCOPE_KEY = "api_key"


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    models: frozenset[str]
    limits: KeyLimitsConfig
    admin: bool = False
    team_models: frozenset[str] = frozenset({"*"})  # its team's models: a key may use what both allow
    budgets: tuple[DollarBudget, ...] = ()  # its own budget in dollars and its team's
    model_budgets: Mapping[str, DollarBudget] = field(default_factory=dict)
    team: str | None = None  # its team's name: cached answers are shared within a team

    @property
    def cache_owner(self) -> str:
        """Whose cached answers this key sees: its team's, else its own."""
        return f"team:{self.team}" if self.team is not None else f"key:{self.name}"

    def may_use(self, model: str) -> bool:
        """``*`` allows every model, ``provider/*`` every model of that provider; the team's list too."""
        return _allows(self.models, model) and _allows(self.team_models, model)

    def budgets_for(self, model: str) -> tuple[DollarBudget, ...]:
        """The dollar budgets a request for ``model`` counts against."""
        per_model = self.model_budgets.get(model)
        return self.budgets if per_model is None else (*self.budgets, per_model)

    def require(self, model: str) -> None:
        """Raise ModelNotAllowed (403) unless this key may use ``model``."""
        if not self.may_use(model):
            raise ModelNotAllowed(self.name, model)


def dollars(usd: float) -> str:
    """An amount as people write it: to the cent (2.50), finer only when it has more (0.025)."""
    cents = f"{usd:.2f}"
    return cents if float(cents) == usd else f"{usd:.10f}".rstrip("0")


def _allows(patterns: frozenset[str], model: str) -> bool:
    if "*" in patterns or model in patterns:
        return True
    provider, slash, _ = model.partition("/")
    return bool(slash) and f"{provider}/*" in patterns


def api_key_of(scope: Scope) -> ApiKey | None:
    """The key ApiKeyMiddleware identified for this request; None on an open gateway."""
    return scope.get("state", {}).get(SCOPE_KEY)


class KeyRing:
    def __init__(self, server: ServerConfig) -> None:
        admin = ApiKey(ADMIN_KEY_NAME, frozenset({"*"}), KeyLimitsConfig(ADMIN_KEY_NAME), admin=True)
        self._by_hash = {sha256(key.get_secret_value()): admin for key in server.admin_keys}
        teams = {key: team for team in server.teams for key in team.keys}
        for config in server.api_keys:
            limits = KeyLimitsConfig(config.name, config.rpm, config.tpm, config.budget_tokens)
            key_hash = config.key_sha256 or sha256(config.key.get_secret_value())  # type: ignore[union-attr]
            team = teams.get(config.name)
            budgets = [
                DollarBudget(f"key:{config.name}", config.budget_usd, config.budget_period,
                             f"{_per(config.budget_period)}budget of ${dollars(config.budget_usd)} of key '{config.name}'")
            ] if config.budget_usd is not None else []  # fmt: skip
            if team is not None and team.budget_usd is not None:
                budgets.append(DollarBudget(f"team:{team.name}", team.budget_usd, team.budget_period,
                                            f"{_per(team.budget_period)}budget of ${dollars(team.budget_usd)} of team '{team.name}'"))  # fmt: skip
            model_budgets = {
                model: DollarBudget(f"key:{config.name}:model:{model}", usd, config.budget_period,
                                    f"{_per(config.budget_period)}budget of ${dollars(usd)} of key '{config.name}' for `{model}`")
                for model, usd in config.model_budgets_usd.items()
            }  # fmt: skip
            team_models = frozenset(team.models) if team is not None else frozenset({"*"})
            self._by_hash[key_hash] = ApiKey(
                config.name, frozenset(config.models), limits, False, team_models, tuple(budgets), model_budgets,
                None if team is None else team.name,
            )
        self.is_open = not server.api_keys
        self.has_admin_keys = bool(server.admin_keys)

    @property
    def is_empty(self) -> bool:
        return not self._by_hash

    @property
    def dollar_budgets(self) -> dict[DollarBudget, tuple[frozenset[str], str | None]]:
        """Every dollar budget, with what the ledger sums for it: the names of its keys, and its model if it has one."""
        found: dict[DollarBudget, tuple[frozenset[str], str | None]] = {}
        for key in self._by_hash.values():
            for budget in key.budgets:  # a team's budget comes once per key of the team
                names, _ = found.get(budget, (frozenset(), None))
                found[budget] = (names | {key.name}, None)
            for model, budget in key.model_budgets.items():
                found[budget] = (frozenset({key.name}), model)
        return found

    @property
    def limited(self) -> list[KeyLimitsConfig]:
        return [key.limits for key in self._by_hash.values() if key.limits.limited]

    def identify(self, headers: Iterable[tuple[bytes, bytes]]) -> ApiKey | None:
        """The key presented; None on an open gateway without a known key; InvalidApiKey otherwise."""
        presented = presented_key(headers)
        key = self._by_hash.get(sha256(presented)) if presented else None
        if key is None and not self.is_open:
            raise InvalidApiKey(presented is not None)
        return key


def _per(period: str) -> str:
    return "" if period == "total" else f"{period} "


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif (name == b"api-key" or name == b"x-api-key") and value.strip():
            return value.decode("latin-1").strip()
    return None


class ApiKeyMiddleware:
    """Records the key of every ``/v1/`` request in the scope (read it with ``api_key_of``).

    Unless the gateway is open, a request without a known key ends here with
    a 401. Health checks and the API description stay open: probes and
    people reading /docs hold no key.
    """

    def __init__(self, app: ASGIApp, keys: KeyRing) -> None:
        self.app = app
        self._keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            try:
                scope.setdefault("state", {})[SCOPE_KEY] = self._keys.identify(scope["headers"])
            except InvalidApiKey as error:
                await send_error(send, error, error_body_for(scope["path"]))  # /v1/messages: Anthropic's shape
                return
        await self.app(scope, receive, send)
