"""Client API keys: who is calling, which models they may use, how often.

Keys come from ``server.api_keys``: the key itself (usually ``${VAR}``) or
its sha256. Either way only the sha256 is kept in memory, and a presented
key is hashed and looked up, so no key is compared character by character.
A key is accepted from ``Authorization: Bearer <key>`` (the OpenAI SDKs) or
``api-key: <key>`` (Azure-style clients). With no keys configured the
gateway is open, and says so at start.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from .config import ApiKeyConfig
from .errors import GatewayError
from .rate_limit import Decision
from .responses import send_error


class InvalidApiKey(GatewayError):
    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"

    def __init__(self, presented: bool) -> None:
        message = (
            "Incorrect API key provided."
            if presented
            else "You didn't provide an API key: send it as `Authorization: Bearer <key>` (or an `api-key` header)."
        )
        super().__init__(message)


class ModelNotAllowed(GatewayError):
    status_code = 403
    error_type = "permission_error"
    code = "model_not_allowed"

    def __init__(self, key: str, model: str) -> None:
        super().__init__(f"The API key '{key}' may not use the model `{model}`.", param="model")


class RateLimitReached(GatewayError):
    status_code = 429
    error_type = "requests"
    code = "rate_limit_exceeded"

    def __init__(self, key: str, decision: Decision) -> None:
        super().__init__(
            f"Rate limit reached for API key '{key}': {decision.limit} requests per minute. "
            f"Try again in {decision.retry_after:.1f}s.",
            headers={**decision.headers(), "retry-after": str(max(1, round(decision.retry_after + 0.5)))},
        )


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    models: frozenset[str]
    rpm: int | None

    def may_use(self, model: str) -> bool:
        """``*`` allows every model, ``provider/*`` every model of that provider."""
        if "*" in self.models or model in self.models:
            return True
        provider, slash, _ = model.partition("/")
        return bool(slash) and f"{provider}/*" in self.models


class KeyRing:
    def __init__(self, configs: Sequence[ApiKeyConfig]) -> None:
        self._by_hash = {
            (config.key_sha256 or sha256(config.key.get_secret_value())): ApiKey(  # type: ignore[union-attr]
                config.name, frozenset(config.models), config.rpm
            )
            for config in configs
        }

    @property
    def is_open(self) -> bool:
        return not self._by_hash

    @property
    def names(self) -> list[str]:
        return [key.name for key in self._by_hash.values()]

    def identify(self, headers: Iterable[tuple[bytes, bytes]]) -> ApiKey:
        presented = presented_key(headers)
        key = self._by_hash.get(sha256(presented)) if presented else None
        if key is None:
            raise InvalidApiKey(presented is not None)
        return key


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"api-key" and value.strip():
            return value.decode("latin-1").strip()
    return None


class ApiKeyMiddleware:
    """Requires a known key on every ``/v1/`` request and records it as ``scope["state"]["api_key"]``.

    Health checks and the API description stay open: probes and people
    reading /docs hold no key.
    """

    def __init__(self, app: ASGIApp, keys: KeyRing) -> None:
        self.app = app
        self._keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            try:
                scope.setdefault("state", {})["api_key"] = self._keys.identify(scope["headers"])
            except InvalidApiKey as error:
                await send_error(send, error)
                return
        await self.app(scope, receive, send)
