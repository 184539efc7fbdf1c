"""Client API keys: who is calling, which models they may use, how often.

Keys come from ``server.api_keys``: the key itself (usually ``${VAR}``) or
its sha256. Either way only the sha256 is kept in memory, and a presented
key is hashed and looked up, so no key is compared character by character.
A key is accepted from ``Authorization: Bearer <key>`` (the OpenAI SDKs),
``api-key: <key>`` (Azure-style clients) or ``x-api-key: <key>`` (Anthropic's
SDKs and Claude Code). With ``server.jwt`` a bearer token signed by an
identity provider takes a key's policy instead (gateway.keys.jwt_auth).
With neither ``api_keys`` nor ``jwt`` configured the gateway is open, and
says so at start. ``admin_keys`` may call every
model without limits and are the only keys that read ``/v1/usage``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.config import ADMIN_KEY_NAME, JwtConfig, ServerConfig, TeamConfig
from gateway.errors import InvalidApiKey, InvalidToken, ModelNotAllowed
from gateway.http.doors import error_body_for
from gateway.http.responses import send_error
from gateway.keys.budgets import DollarBudget
from gateway.keys.limits import KeyLimitsConfig

if TYPE_CHECKING:
    from gateway.keys.jwt_auth import TokenVerifier

logger = logging.getLogger(__name__)

# The longest name a JWT may give itself: it goes to the ledger, limits and errors.
MAX_TOKEN_NAME_CHARS = 256

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
    token_models: frozenset[str] = frozenset({"*"})  # a JWT's models claim: narrows both lists above

    @property
    def cache_owner(self) -> str:
        """Whose cached answers this key sees: its team's, else its own."""
        return f"team:{self.team}" if self.team is not None else f"key:{self.name}"

    def may_use(self, model: str) -> bool:
        """``*`` allows every model, ``provider/*`` every model of that provider; the team's list too."""
        return _allows(self.models, model) and _allows(self.team_models, model) and _allows(self.token_models, model)

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


def key_name_of(scope: Scope) -> str | None:
    """The name of the key that made this request: what owns its files and batches (None on an open gateway)."""
    key = api_key_of(scope)
    return None if key is None else key.name


def team_budget(team: TeamConfig) -> tuple[DollarBudget, ...]:
    """The dollar budget its keys share, if it has one."""
    if team.budget_usd is None:
        return ()
    return (DollarBudget(f"team:{team.name}", team.budget_usd, team.budget_period,
                         f"{_per(team.budget_period)}budget of ${dollars(team.budget_usd)} of team '{team.name}'"),)  # fmt: skip


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
            if team is not None:
                budgets.extend(team_budget(team))
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
        self._jwt: TokenVerifier | None = None
        self._jwt_config: JwtConfig | None = server.jwt
        self._by_name = {key.name: key for key in self._by_hash.values() if not key.admin}
        self._teams = {team.name: team for team in server.teams}
        if server.jwt is not None:
            from gateway.keys.jwt_auth import TokenVerifier  # PyJWT is needed only with server.jwt

            self._jwt = TokenVerifier(server.jwt)
        self.is_open = not server.api_keys and server.jwt is None
        self.has_admin_keys = bool(server.admin_keys)

    @property
    def is_empty(self) -> bool:
        return not self._by_hash and self._jwt is None

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

    async def identify_request(self, headers: Iterable[tuple[bytes, bytes]]) -> ApiKey | None:
        """As ``identify``, and a bearer token that is not a known key is checked as a JWT when server.jwt is set."""
        if self._jwt is not None:
            presented = presented_key(headers)
            if presented is not None and looks_like_jwt(presented) and sha256(presented) not in self._by_hash:
                try:
                    return self._token_policy(await self._jwt.claims(presented))
                except InvalidToken as refusal:  # why, for whoever debugs a sign-in: never the token itself
                    logger.info("%s", refusal.message)
                    raise
        return self.identify(headers)

    def _token_policy(self, claims: Mapping[str, Any]) -> ApiKey:
        """A verified token's policy: its named api_keys entry's, else server.jwt.default; its models claim narrows it."""
        from gateway.keys.jwt_auth import claimed_names

        config = self._jwt_config
        assert config is not None
        names = config.claims
        name = claims.get(names.key_name)
        if not isinstance(name, str) or not 0 < len(name) <= MAX_TOKEN_NAME_CHARS:
            raise InvalidToken(f"the token's `{names.key_name}` claim is not a name (a string of 1 to {MAX_TOKEN_NAME_CHARS} characters)")
        if name == ADMIN_KEY_NAME:  # the admin keys' name in the ledger; a token never takes their powers
            raise InvalidToken(f"the token's `{names.key_name}` claim is `{ADMIN_KEY_NAME}`, the admin keys' name")
        key = self._by_name.get(name)
        if key is None:
            teams = claimed_names(claims.get(names.team)) if names.team is not None else []
            key = self._default_policy(name, next((found for found in teams if found in self._teams), None))
        if names.models is None or names.models not in claims:
            return key
        return replace(key, token_models=frozenset(claimed_names(claims[names.models])))

    def _default_policy(self, name: str, team_name: str | None) -> ApiKey:
        """server.jwt.default's policy under ``name``, in team ``team_name`` (a configured team's name) if any."""
        assert self._jwt_config is not None
        policy, team = self._jwt_config.default, self._teams.get(team_name) if team_name is not None else None
        return ApiKey(
            name, frozenset(policy.models), KeyLimitsConfig(name, policy.rpm, policy.tpm), False,
            frozenset({"*"}) if team is None else frozenset(team.models), () if team is None else team_budget(team),
            {}, None if team is None else team.name,
        )  # fmt: skip

    def policy_of(self, name: str, team: str | None = None, token_models: frozenset[str] = frozenset({"*"})) -> ApiKey | None:
        """The policy a caller named ``name`` has now, for work done later on its behalf (a batch's lines).

        The admin keys' name, an api_keys entry's, or (with server.jwt) a token's:
        ``team`` and ``token_models`` as its claims gave them. None: no such caller any more.
        """
        if name == ADMIN_KEY_NAME:
            return next((key for key in self._by_hash.values() if key.admin), None)
        key = self._by_name.get(name)
        if key is None and self._jwt_config is not None:
            key = self._default_policy(name, team)
        return None if key is None else replace(key, token_models=token_models)


def _per(period: str) -> str:
    return "" if period == "total" else f"{period} "


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def looks_like_jwt(presented: str) -> bool:
    """A compact JWS: three base64url parts, a JSON header first (``eyJ`` is ``{"``)."""
    return presented.startswith("eyJ") and presented.count(".") == 2


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
                scope.setdefault("state", {})[SCOPE_KEY] = await self._keys.identify_request(scope["headers"])
            except (InvalidApiKey, InvalidToken) as error:
                await send_error(send, error, error_body_for(scope["path"]))  # /v1/messages: Anthropic's shape
                return
        await self.app(scope, receive, send)
