"""JWT sign-in (``server.jwt``): checking a bearer token signed by an identity provider.

What a verified token may do (its policy) is the KeyRing's to say
(``gateway.keys.keyring``); this module only says whether it verifies.

A token is checked with PyJWT (signature, ``exp``, ``nbf``/``iat`` within
``leeway``, ``iss``, ``aud``) against one configured public key or the
issuer's JWKS. The JWKS is fetched without blocking the event loop, used
for ``jwks_ttl`` seconds, and fetched again at once when a token names a
``kid`` it does not have (the issuer rotated its keys). Fetches are at
least ``jwks_min_interval`` apart whatever tokens arrive, so a flood of
made-up ``kid`` values costs the issuer one fetch per interval.

A refusal is an ``InvalidToken`` that says which check failed; neither it
nor any log line holds the token. PyJWT is imported here only, and this
module only when ``server.jwt`` is set.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import httpx

from gateway.config import JwtConfig
from gateway.errors import ConfigError, InvalidToken

try:
    import jwt
except ImportError:  # an optional dependency: say so at start, not at the first token
    jwt = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

Fetch = Callable[[str], Awaitable[Mapping[str, Any]]]


class SigningKeys(Protocol):
    async def key_for(self, kid: str | None) -> Any:
        """The key that verifies a token with this ``kid``; InvalidToken when there is none."""
        ...


class StaticKey:
    """``public_key``: one PEM key, whatever ``kid`` a token names."""

    def __init__(self, pem: str) -> None:
        from cryptography.hazmat.primitives.serialization import load_pem_public_key  # PyJWT[crypto] brings it

        try:
            self._key = load_pem_public_key(pem.strip().encode())
        except (ValueError, TypeError):
            raise ConfigError("providers.yaml", ["server.jwt.public_key: not a PEM public key"]) from None

    async def key_for(self, kid: str | None) -> Any:
        return self._key


async def fetch_json(url: str) -> Mapping[str, Any]:
    async with httpx.AsyncClient(timeout=5.0, follow_redirects=False) as client:
        response = await client.get(url, headers={"accept": "application/json"})
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]


class Jwks:
    """The issuer's JWKS, cached; refetched past its TTL or for an unknown ``kid``, never more often than ``min_interval``."""

    def __init__(
        self, url: str, ttl: float, min_interval: float, fetch: Fetch = fetch_json,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self._url = url
        self._ttl = ttl
        self._min_interval = min_interval
        self._fetch = fetch
        self._clock = clock
        self._keys: dict[str | None, Any] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._tried_at: float | None = None  # last attempt, failed or not: what min_interval counts from
        self._lock = asyncio.Lock()  # one fetch at a time; the others wait for it and read its keys

    async def key_for(self, kid: str | None) -> Any:
        now = self._clock()
        if self._fetched_at is None or now - self._fetched_at >= self._ttl or self._find(kid) is None:
            async with self._lock:
                if self._may_fetch(kid):
                    await self._refresh()
        key = self._find(kid)
        if key is None:
            if not self._keys:
                raise InvalidToken("the issuer's signing keys (server.jwt.jwks_url) could not be fetched")
            raise InvalidToken("the token's signing key (its `kid`) is not one the issuer publishes")
        return key

    def _may_fetch(self, kid: str | None) -> bool:
        now = self._clock()
        if self._tried_at is not None and now - self._tried_at < self._min_interval:
            return False
        stale = self._fetched_at is None or now - self._fetched_at >= self._ttl
        return stale or self._find(kid) is None  # another request's fetch may have found it meanwhile

    def _find(self, kid: str | None) -> Any:
        if kid is None:  # a token without kid: only an issuer with one key says which
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        self._tried_at = self._clock()
        try:
            document = await self._fetch(self._url)
            keys = {
                jwk.key_id: jwk.key
                for jwk in jwt.PyJWKSet.from_dict(dict(document)).keys
                if jwk.public_key_use in (None, "sig")
            }
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as error:
            # Old keys stay in use: an issuer that is down for a while does not sign everyone out.
            logger.warning("server.jwt: could not fetch the JWKS at %s (%s)", self._url, type(error).__name__)
            return
        self._keys = keys
        self._fetched_at = self._tried_at


class TokenVerifier:
    """Checks a token against server.jwt and returns its claims; what they grant is the KeyRing's to say."""

    def __init__(self, config: JwtConfig, fetch: Fetch = fetch_json) -> None:
        if jwt is None:
            raise ConfigError("providers.yaml", ["server.jwt needs PyJWT: pip install 'switchyard[jwt]'"])
        self._config = config
        self._keys: SigningKeys = (
            StaticKey(config.public_key) if config.public_key is not None
            else Jwks(config.jwks_url or "", config.jwks_ttl, config.jwks_min_interval, fetch)
        )  # fmt: skip

    async def claims(self, token: str) -> dict[str, Any]:
        """The claims of a token that verifies; InvalidToken naming what is wrong otherwise."""
        config = self._config
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("it is not a well-formed JWT") from None
        algorithm = header.get("alg")
        if algorithm not in config.algorithms:
            shown = algorithm if isinstance(algorithm, str) and len(algorithm) <= 16 else "?"
            raise InvalidToken(f"its algorithm `{shown}` is not one of {', '.join(config.algorithms)}")
        kid = header.get("kid")
        key = await self._keys.key_for(kid if isinstance(kid, str) else None)
        try:
            return jwt.decode(  # type: ignore[no-any-return]
                token, key, algorithms=[algorithm], audience=config.audience, issuer=config.issuer,
                leeway=config.leeway, options={"require": ["exp", "iss", "aud"]},
            )  # fmt: skip
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the token has expired") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken(f"the token's audience is not `{config.audience}`") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken(f"the token's issuer is not `{config.issuer}`") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("the token is not valid yet (its nbf or iat is in the future)") from None
        except jwt.MissingRequiredClaimError as error:
            raise InvalidToken(f"the token has no `{error.claim}` claim") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("the token's signature does not verify") from None
        except jwt.PyJWTError:  # a malformed claim or a key of the wrong type: the message could quote the token
            raise InvalidToken("the token could not be verified") from None


def claimed_names(value: object) -> list[str]:
    """A claim as a list of names: a list of strings, or one string of space-separated names (as `scope` is)."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []

