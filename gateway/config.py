"""``providers.yaml``: read once at start, validated, then passed down immutable.

This module is the one place that reads the process environment for the
config file: ``${VAR}`` and ``${VAR:-default}`` in string values, and each
preset's key variable (``OPENAI_API_KEY``, ...) for providers that name no
``api_key``. A bad file fails here with the file, the field path and what
was expected, never a traceback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.errors import ConfigError
from gateway.webhooks import EventType, secret_key
from providers import PRESETS, ProviderConfig
from providers.base import UnsupportedPolicy
from providers.config import PROVIDER_SHAPES, HostedProviderConfig
from providers.local import LocalProviderConfig, serves_embeddings


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# The name admin keys go by in the ledger and in limits.
ADMIN_KEY_NAME = "admin"
# An entry of server.allowed_hosts: a DNS name or an IP address (IPv6 in brackets), no port.
_HOST_NAME = re.compile(r"[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\]")


BudgetPeriod = Literal["daily", "weekly", "monthly", "total"]


class TeamConfig(_Frozen):
    """Keys that share a budget (and may be held to fewer models together)."""

    name: str = Field(min_length=1, description="Shown in refusals and logs.")
    keys: list[str] = Field(min_length=1, description="The names of its keys (server.api_keys[].name).")
    models: list[str] = Field(default_factory=lambda: ["*"], description="Models its keys may call; '*' is all.")
    budget_usd: float | None = Field(None, gt=0, allow_inf_nan=False, description="US dollars its keys may spend together per budget_period.")
    budget_period: BudgetPeriod = Field("total", description="daily, weekly (from Monday), monthly, or total.")


class OtelConfig(_Frozen):
    """OpenTelemetry traces over OTLP/HTTP (docs/observability.md); the OTEL_EXPORTER_OTLP_* variables fill what is unset."""

    endpoint: str | None = Field(
        None, description="The collector's OTLP/HTTP URL (http://collector:4318; /v1/traces is added to a URL without "
        "a path); unset: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT, else localhost:4318.",
    )
    service_name: str = Field("switchyard", min_length=1, description="The traces' service.name.")
    sample_ratio: float = Field(
        1.0, ge=0, le=1, description="Share of requests traced; a client's traceparent decides for its own (parent-based)."
    )
    record_content: bool = Field(
        False, description="Record prompts and answers in the spans (gen_ai.input.messages, gen_ai.output.messages)."
    )

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        return url

# Asymmetric algorithms only: a shared secret (HS256) in the gateway's config would let the gateway, and
# whoever reads its config, mint tokens; "none" is never accepted.
JwtAlgorithm = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]


class JwtClaimsConfig(_Frozen):
    """Which claims of a token say who it is (docs/auth.md, "JWT sign-in")."""

    key_name: str = Field("sub", min_length=1, description="The claim whose value is the caller's name: an api_keys "
                          "entry's name takes that key's policy; any other name takes server.jwt.default.")
    team: str | None = Field(None, min_length=1, description="A claim naming a server.teams entry (a string, or a list: "
                             "the first configured team in it), for a name with no api_keys entry.")
    models: str | None = Field(None, min_length=1, description="A claim listing models (a list, or a space-separated "
                               "string) that narrows what the token may call.")


class JwtPolicyConfig(_Frozen):
    """What a token whose name has no api_keys entry may do; limits count per name, as a key's do."""

    models: list[str] = Field(default_factory=lambda: ["*"], description="Models it may call; '*' is all.")
    rpm: int | None = Field(None, ge=1, description="Requests per minute, per name.")
    tpm: int | None = Field(None, ge=1, description="Tokens (prompt + completion) per minute, per name.")


class JwtConfig(_Frozen):
    """Sign-in with JSON Web Tokens beside API keys, verified with PyJWT (pip install 'switchyard[jwt]')."""

    issuer: str = Field(min_length=1, description="The `iss` every token must carry.")
    audience: str = Field(min_length=1, description="A value the token's `aud` must hold.")
    jwks_url: str | None = Field(None, description="The issuer's JWKS (https://idp.example.com/.well-known/jwks.json).")
    public_key: str | None = Field(None, description="Instead of jwks_url: one PEM public key, e.g. ${JWT_PUBLIC_KEY}.")
    algorithms: list[JwtAlgorithm] = Field(
        default_factory=lambda: ["RS256", "ES256"], min_length=1, description="Signing algorithms accepted (asymmetric only)."
    )
    leeway: float = Field(30.0, ge=0, le=300, description="Seconds of clock skew allowed on exp, nbf and iat.")
    jwks_ttl: float = Field(300.0, gt=0, description="Seconds the fetched JWKS is used before it is fetched again.")
    jwks_min_interval: float = Field(
        30.0, ge=0, description="Fewest seconds between two fetches: a token naming an unknown `kid` refetches at most this often."
    )
    claims: JwtClaimsConfig = Field(default_factory=JwtClaimsConfig, description="Which claims name the caller, team, models.")
    default: JwtPolicyConfig = Field(
        default_factory=JwtPolicyConfig, description="The policy of a name that no api_keys entry has."
    )

    @field_validator("jwks_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        return url

    @model_validator(mode="after")
    def _one_source(self) -> JwtConfig:
        if (self.jwks_url is None) == (self.public_key is None or not self.public_key.strip()):
            raise ValueError("give exactly one of `jwks_url` and `public_key`")
        return self


class WebhookConfig(_Frozen):
    """An endpoint told of requests' outcomes, each body signed as Standard Webhooks asks (docs/webhooks.md)."""

    url: str = Field(description="Where events are POSTed: an http:// or https:// URL.")
    events: list[EventType] = Field(
        min_length=1, description="Any of request.completed, request.failed, budget.exceeded, batch.completed."
    )
    secret: SecretStr = Field(description="whsec_ then the base64 of a 24 to 64 byte key, e.g. ${WEBHOOK_SECRET}.")
    include_content: bool = Field(False, description="Add the request's messages and the answer's text to each body.")
    max_attempts: int = Field(8, ge=1, le=50, description="Attempts per event before it is given up on.")
    backoff_initial: float = Field(1.0, gt=0, allow_inf_nan=False, description="Seconds before the first retry; doubles, jittered.")
    backoff_max: float = Field(60.0, gt=0, allow_inf_nan=False, description="Longest wait between two attempts (a Retry-After too).")
    timeout: float = Field(10.0, gt=0, allow_inf_nan=False, description="Seconds an attempt may take.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        return url

    @field_validator("secret")
    @classmethod
    def _whsec(cls, secret: SecretStr) -> SecretStr:
        secret_key(secret.get_secret_value())  # its message never holds the secret
        return secret


class ApiKeyConfig(_Frozen):
    """A client key: the key itself (from the environment) or its sha256, what it may call, how often."""

    key: SecretStr | None = Field(None, description="The key, e.g. ${TEAM_A_KEY}; never logged.")
    key_sha256: str | None = Field(None, pattern="^[0-9a-f]{64}$", description="The key's sha256, hex.")
    name: str = Field(min_length=1, description="Shown in logs and limits instead of the key.")
    models: list[str] = Field(default_factory=lambda: ["*"], description="Models it may call; '*' is all.")
    rpm: int | None = Field(None, ge=1, description="Requests per minute.")
    tpm: int | None = Field(None, ge=1, description="Tokens (prompt + completion) per minute.")
    budget_tokens: int | None = Field(
        None, ge=1, description="Tokens this key may spend in all, counted in the usage ledger."
    )
    budget_usd: float | None = Field(None, gt=0, allow_inf_nan=False, description="US dollars this key may spend per budget_period.")
    budget_period: BudgetPeriod = Field("total", description="daily, weekly (from Monday), monthly, or total (never reset).")
    model_budgets_usd: dict[str, float] = Field(
        default_factory=dict, description="Dollars per budget_period this key may spend on each named model."
    )

    @field_validator("model_budgets_usd")
    @classmethod
    def _positive_budgets(cls, budgets: dict[str, float]) -> dict[str, float]:
        for model, usd in budgets.items():
            if not (usd > 0 and usd != float("inf")):
                raise ValueError(f"the budget for {model!r} must be a positive number of dollars")
        return budgets

    @model_validator(mode="after")
    def _one_key(self) -> ApiKeyConfig:
        if (self.key is None or not self.key.get_secret_value()) == (self.key_sha256 is None):
            raise ValueError("give exactly one of `key` and `key_sha256`")
        return self


class ServerConfig(_Frozen):
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind (0 picks a free one).")
    log_level: str = Field("info", pattern="^(critical|error|warning|info|debug)$")
    access_log: bool = Field(False, description="Log one line per request (costs CPU on the hot path).")
    log_format: Literal["text", "json"] = Field("text", description="Log lines as text, or one JSON object each.")
    cors_origins: list[str] = Field(
        default_factory=list, description="Browser origins allowed to call the API (CORS); ['*'] for any."
    )
    # The connection limits of gateway/http_server.py and the Host check of gateway/browser_guard.py.
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header names answered besides loopback ones (others get a 421, on any bind address "
        "once this is set); ['*'] turns the check off.",
    )
    header_timeout: float = Field(
        10.0, gt=0, description="Seconds from a connection's opening, or a request's first byte, to its last header."
    )
    body_timeout: float = Field(
        10.0, gt=0, description="Seconds a request body may take, plus one second per body_min_rate bytes received."
    )
    body_min_rate: int = Field(16384, ge=1, description="Bytes per second that buy a slow body one more second.")
    keepalive_timeout: float = Field(5.0, gt=0, description="Seconds an idle keep-alive connection is kept open.")
    max_connections: int = Field(
        1000, ge=1, description="Open client connections at most; a request on one more is answered 503, then closed."
    )
    max_body_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="Largest request body on any endpoint (413 past it, read no further)."
    )
    # What the gateway takes from a client at most (docs/security.md); each past its limit is a 4xx.
    max_json_depth: int = Field(
        64, ge=2, le=128, description="Deepest nesting of objects and arrays in a JSON body, the body as one (400)."
    )
    max_model_chars: int = Field(
        256, ge=1, le=65536, description="Longest `model` a request may name (400): it goes to the ledger and errors."
    )
    max_header_count: int = Field(100, ge=1, description="Most header fields in a request (431 past it).")
    max_header_bytes: int = Field(
        16384, ge=1024, description="Most bytes in a request's target and header fields together (414 or 431 past it)."
    )
    api_keys: list[ApiKeyConfig] = Field(default_factory=list, description="Client keys; none: the gateway is open.")
    teams: list[TeamConfig] = Field(default_factory=list, description="Keys that share a budget in dollars.")
    budget_timezone: str = Field("UTC", description="Where daily, weekly and monthly budgets reset at midnight (IANA name).")
    reserve_max_tokens: int = Field(
        4096, ge=1, description="Completion tokens a dollar budget reserves for a request that sets no max_tokens."
    )
    admin_keys: list[SecretStr] = Field(
        default_factory=list, description="Keys that may read /v1/usage and call every model without limits."
    )
    data_dir: Path = Field(
        Path("switchyard-data"), description="Where the SQLite usage ledger and the kept Responses answers are."
    )
    usage_ledger: bool = Field(True, description="Keep one record per request (off: nothing is written).")
    webhooks: list[WebhookConfig] = Field(
        default_factory=list, description="Endpoints told of finished requests and spent budgets (docs/webhooks.md)."
    )
    store_responses: bool = Field(
        True,
        description="Keep /v1/responses answers (unless a request says store: false) for previous_response_id "
        "and GET /v1/responses/{id}; off: both answer 404/400 as for an id nobody kept.",
    )
    ledger_flush_interval: float = Field(
        1.0, gt=0, le=60, description="Seconds between ledger writes; a kill -9 loses at most this much."
    )
    batch_concurrency: int = Field(
        8, ge=1, le=1024, description="Batch lines (/v1/batches) sent at once by this gateway, across all its batches."
    )
    max_file_bytes: int = Field(
        200 * 1024 * 1024, ge=1024, description="Largest file POST /v1/files takes (413 past it, read no further)."
    )
    files_dir: Path | None = Field(
        None, description="Where uploaded and batch output file bodies are kept (unset: data_dir/files); with "
        "database_url, a path every replica shares (an object store's mount).",
    )
    otel: OtelConfig | None = Field(
        None, description="Traces over OTLP; unset, they are on only when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set."
    )
    database_url: SecretStr | None = Field(
        None, description="postgresql://... : keep the ledger and the Responses answers in PostgreSQL instead of "
        "SQLite (several replicas).",
    )
    redis_url: SecretStr | None = Field(
        None, description="redis://... : keep rate limits, budgets and response caches in Redis, shared by every replica."
    )
    status_page: Literal["public", "admin", "off"] = Field(
        "admin", description="GET /status (a live page) and /status.json: for anyone, for admin keys only, or not served."
    )

    @field_validator("status_page", mode="before")
    @classmethod
    def _unquoted_off(cls, value: object) -> object:
        return "off" if value is False else value  # YAML reads a bare `off` as false

    jwt: JwtConfig | None = Field(
        None, description="Sign-in with JSON Web Tokens beside api_keys (docs/auth.md, \"JWT sign-in\")."
    )

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if name != "*" and not _HOST_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a host name: give it without scheme, port or path (api.example.com)")
        return names

    @model_validator(mode="after")
    def _usable_urls(self) -> ServerConfig:
        for index, key in enumerate(self.admin_keys):
            if not key.get_secret_value():
                raise ValueError(f"admin_keys[{index}] is empty")
        if self.database_url is not None and not self.database_url.get_secret_value().startswith(
            ("postgresql://", "postgres://")
        ):
            raise ValueError("database_url must start with postgresql://")
        if self.redis_url is not None and not self.redis_url.get_secret_value().startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        self._check_budgets()
        return self

    def _check_budgets(self) -> None:
        try:
            ZoneInfo(self.budget_timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"budget_timezone {self.budget_timezone!r} is not a time zone name (Europe/Paris, UTC)") from None
        names = {key.name for key in self.api_keys}
        teams: dict[str, str] = {}
        for team in self.teams:
            for key in team.keys:
                if key not in names:
                    raise ValueError(f"team {team.name!r} names key {key!r}, which api_keys does not have")
                if key in teams:
                    raise ValueError(f"key {key!r} is in two teams ({teams[key]!r} and {team.name!r})")
                teams[key] = team.name


class DeploymentConfig(_Frozen):
    provider: str = Field(description="A name from `providers:`.")
    model: str = Field(min_length=1, description="The model's name at that provider.")
    weight: float = Field(1.0, gt=0, description="Share of traffic under `routing: weighted`.")


RoutingStrategy = Literal["weighted", "ordered", "least_busy", "lowest_latency", "local_first"]


class LocalFirstConfig(_Frozen):
    """When a local engine has room under ``routing: local_first`` (docs/resilience.md, "Local first")."""

    max_running: int = Field(
        4, ge=1, description="Requests in flight on the local engine that still run at once; past it, the next "
        "goes to the next deployment.",
    )
    max_waiting: int = Field(
        0, ge=0, description="Requests that may wait in the local engine's queue once max_running are in flight.",
    )


class ModelPrice(_Frozen):
    """A model's own price (a negotiated rate, a private deployment's cost); it wins over genai-prices' table."""

    input_per_mtok: float = Field(
        ge=0, allow_inf_nan=False, description="US dollars per million prompt tokens not read from or written to a cache."
    )
    output_per_mtok: float = Field(
        ge=0, allow_inf_nan=False, description="US dollars per million completion tokens, reasoning tokens included."
    )
    cached_input_per_mtok: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="US dollars per million prompt tokens read from a cache; "
        "default: input_per_mtok.",
    )
    cache_write_per_mtok: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="US dollars per million prompt tokens written to a cache "
        "(Anthropic's cache creation); default: input_per_mtok.",
    )
    # Audio and images are billed in their own units (docs/media.md); tokens, where an answer reports them, above.
    per_audio_minute: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="US dollars per minute of audio transcribed or translated."
    )
    per_million_characters: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="US dollars per million characters of speech `input`."
    )
    per_image: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="US dollars per image made or edited (one price for every size)."
    )


class CacheConfig(_Frozen):
    """A model's response cache (docs/caching.md): off unless a model has one."""

    mode: Literal["exact", "semantic"] = Field(
        description="exact: the same request; semantic: the same conversation with a last user message that "
        "means the same (embedded by a local embedding model).",
    )
    ttl: float = Field(3600.0, gt=0, allow_inf_nan=False, description="Seconds an answer is kept.")
    max_entries: int = Field(10000, ge=1, description="Answers kept for this model at most (the oldest go first).")
    similarity: float = Field(
        0.95, gt=0, le=1, description="semantic: the least cosine similarity between two last user messages "
        "for one to be answered with the other's answer.",
    )
    sampled: bool = Field(
        False, description="Also cache requests that sample (temperature above 0 and no seed); by default only "
        "deterministic ones are.",
    )
    embedder: str | None = Field(
        None, description="semantic: the `type: local` provider with the embedding model; default: the first "
        "such provider.",
    )


class ShadowConfig(_Frozen):
    """A model that gets a sampled copy of this model's requests, after the real answer (docs/caching.md)."""

    model: str = Field(description="A name under `models:`.")
    sample: float = Field(gt=0, le=1, description="Share of requests copied, 0 to 1.")


class BatchConfig(_Frozen):
    """How this model's batches run (docs/batches.md): the gateway sends each line through its router, or the
    provider's own Batch API runs the whole file at its discount."""

    mode: Literal["gateway", "native"] = Field(
        "gateway", description="gateway: each line through the router (any provider, the local engine); native: "
        "a batch whose lines all name this model is run by the Batch API of its first deployment that has one.",
    )
    discount: float | None = Field(
        None, ge=0, le=1, allow_inf_nan=False, description="native: the share off the ordinary price the provider "
        "bills a batch's tokens; default: its preset's (openai, azure 0.5; groq 0.25; custom 0).",
    )
    poll_interval: float = Field(
        30.0, gt=0, le=3600, allow_inf_nan=False, description="native: seconds between two reads of the provider's batch.",
    )


class ModelConfig(_Frozen):
    deployments: list[DeploymentConfig] = Field(min_length=1)
    routing: RoutingStrategy | None = Field(None, description="How a deployment is picked; default: router.routing.")
    local_first: LocalFirstConfig | None = Field(
        None, description="Under routing local_first: how much the local engine takes before overflow; default: "
        "max_running 4, max_waiting 0.",
    )
    context_window: int | None = Field(
        None, gt=0, description="Prompt + max_tokens limit; larger requests go to context_window_fallbacks."
    )
    unsupported_params: UnsupportedPolicy = Field(
        "drop", description="A parameter a deployment's provider does not take: drop it (and say so) or answer 400."
    )
    cache: CacheConfig | None = Field(None, description="A response cache for this model; default: none.")
    shadow: list[ShadowConfig] = Field(
        default_factory=list, description="Models that get a sampled copy of this model's requests (shadow traffic).",
    )
    price: ModelPrice | None = Field(
        None, description="This model's price on every one of its deployments, over genai-prices' (and a local "
        "model's zero); default: genai-prices', or unknown.",
    )
    batch: BatchConfig | None = Field(None, description="How its batches run; default: by the gateway (mode gateway).")


class RetryConfig(_Frozen):
    attempts: int = Field(3, ge=1, le=20, description="Calls per deployment for retryable errors (1 = no retry).")
    backoff_initial: float = Field(0.25, ge=0, description="Seconds before the first retry; doubles each time.")
    backoff_max: float = Field(8.0, ge=0, description="Longest wait between two retries.")
    retry_after_max: float = Field(
        30.0, ge=0, description="Cap on an upstream's Retry-After: the wait before a retry, and what a client is told."
    )


class CooldownConfig(_Frozen):
    failures: int = Field(3, ge=1, description="Failures within `window` that open the breaker.")
    window: float = Field(60.0, gt=0, description="Seconds over which failures are counted.")
    duration: float = Field(30.0, ge=0, description="Seconds a deployment is skipped before one probe request.")


class RouterConfig(_Frozen):
    routing: RoutingStrategy = "weighted"
    timeout: float = Field(600.0, gt=0, description="Deadline per request across retries and fallbacks, seconds.")
    stream_first_event_timeout: float = Field(60.0, gt=0, description="Seconds from the call to a stream's first event.")
    stream_stall_timeout: float = Field(60.0, gt=0, description="Longest silence between two stream events, seconds.")
    retries: RetryConfig = RetryConfig()
    cooldown: CooldownConfig = CooldownConfig()


class GatewayConfig(_Frozen):
    server: ServerConfig = ServerConfig()
    router: RouterConfig = RouterConfig()
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    fallbacks: dict[str, list[str]] = Field(default_factory=dict)
    context_window_fallbacks: dict[str, list[str]] = Field(default_factory=dict)
    content_policy_fallbacks: dict[str, list[str]] = Field(default_factory=dict)
    default_fallbacks: list[str] = Field(default_factory=list)

    def native_batch_target(self, model: str) -> tuple[DeploymentConfig, float] | None:
        """Under ``batch: {mode: native}``: the deployment whose provider's Batch API runs ``model``'s batches
        (its first on a provider that has one), and the discount it bills them at."""
        entry = self.models.get(model)
        if entry is None or entry.batch is None or entry.batch.mode != "native":
            return None
        for deployment in entry.deployments:
            provider = self.providers.get(deployment.provider)
            if isinstance(provider, HostedProviderConfig) and provider.preset.batch_discount is not None:
                discount = entry.batch.discount
                return deployment, provider.preset.batch_discount if discount is None else discount
        return None

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every provider and client key, masked in every answer (gateway/redaction.py) and log line."""
        provider_keys = [
            p.api_key.get_secret_value()
            for p in self.providers.values()
            if isinstance(p, HostedProviderConfig) and p.api_key is not None
        ]
        client_keys = [k.key.get_secret_value() for k in self.server.api_keys if k.key is not None]
        admin_keys = [key.get_secret_value() for key in self.server.admin_keys]
        urls = [url.get_secret_value() for url in (self.server.database_url, self.server.redis_url) if url is not None]
        webhook_secrets = [hook.secret.get_secret_value() for hook in self.server.webhooks]
        return tuple(
            provider_keys + client_keys + admin_keys + urls + [_password(url) for url in urls if _password(url)]
            + webhook_secrets
        )


def _password(url: str) -> str:
    return urlsplit(url).password or ""


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read, interpolate and validate a config file; raise ConfigError when it is unusable."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [f"cannot read the file: {exc.strerror}"]) from None
    return parse_config(text, source=source, environ=os.environ if environ is None else environ)


def parse_config(text: str, *, source: str = "<config>", environ: Mapping[str, str]) -> GatewayConfig:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [f"{where}not valid YAML: {problem}"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, ["the top level must be a mapping (server, providers, models, fallbacks)"])

    problems: list[str] = []
    raw = _interpolate(raw, environ, "", problems)
    _default_api_keys(raw, environ)
    if problems:
        raise ConfigError(source, problems)
    try:
        config = GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, [_describe(error) for error in exc.errors()]) from None
    problems = _cross_reference_problems(config)
    if problems:
        raise ConfigError(source, problems)
    return config


def with_server_overrides(config: GatewayConfig, overrides: Mapping[str, Any], source: str) -> GatewayConfig:
    """``config`` with some ``server:`` fields replaced, validated as if the file had said so."""
    try:
        server = ServerConfig.model_validate({**config.server.model_dump(), **overrides})
    except ValidationError as exc:
        raise ConfigError(source, [_describe(error) for error in exc.errors()]) from None
    return config.model_copy(update={"server": server})


_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(value: Any, environ: Mapping[str, str], path: str, problems: list[str]) -> Any:
    """Substitute ``${VAR}`` and ``${VAR:-default}`` in string values; ``$$`` is a literal ``$``."""
    if isinstance(value, dict):
        return {key: _interpolate(item, environ, _join(path, key), problems) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item, environ, f"{path}[{index}]", problems) for index, item in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        problems.append(f"{path}: environment variable {name} is not set (write ${{{name}:-default}} to allow that)")
        return ""

    return _VARIABLE.sub(substitute, value)


def _default_api_keys(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    """A provider with no ``api_key`` takes its preset's variable (``OPENAI_API_KEY``, ...)."""
    providers = raw.get("providers")
    if not isinstance(providers, dict):
        return
    for entry in providers.values():
        if not isinstance(entry, dict) or "api_key" in entry:
            continue
        preset = PRESETS.get(entry.get("type"))  # type: ignore[arg-type]
        key = preset.key_from(environ) if preset is not None else None
        if key:
            entry["api_key"] = key


def _cross_reference_problems(config: GatewayConfig) -> list[str]:
    problems = []
    known_providers = ", ".join(config.providers) or "(none configured)"
    for model_name, model in config.models.items():
        for index, deployment in enumerate(model.deployments):
            if deployment.provider not in config.providers:
                problems.append(
                    f"models.{model_name}.deployments[{index}].provider: unknown provider "
                    f"{deployment.provider!r}; expected one of: {known_providers}"
                )
        for index, shadow in enumerate(model.shadow):
            if shadow.model not in config.models or shadow.model == model_name:
                problems.append(f"models.{model_name}.shadow[{index}].model: {shadow.model!r} is not another model under `models:`")
        problems += _cache_problems(model_name, model, config)
        if model.batch is not None and model.batch.mode == "native" and config.native_batch_target(model_name) is None:
            offered = ", ".join(name for name, preset in PRESETS.items() if preset.batch_discount is not None)
            problems.append(f"models.{model_name}.batch.mode: native needs a deployment on a provider with a Batch API "
                            f"({offered})")  # fmt: skip
        if model.local_first is not None and (model.routing or config.router.routing) != "local_first":
            problems.append(f"models.{model_name}.local_first: only read under `routing: local_first`")
        if model.routing == "local_first" and not any(
            isinstance(config.providers.get(d.provider), LocalProviderConfig) for d in model.deployments
        ):
            problems.append(f"models.{model_name}.routing: local_first needs a deployment on a `type: local` provider")
    names = [key.name for key in config.server.api_keys]
    adapters = {module.name for p in config.providers.values() if isinstance(p, LocalProviderConfig) for module in p.lora_modules}
    for index, key in enumerate(config.server.api_keys):
        if names.count(key.name) > 1:
            problems.append(f"server.api_keys[{index}].name: {key.name!r} is used twice")
        if key.name == ADMIN_KEY_NAME:
            problems.append(f"server.api_keys[{index}].name: {ADMIN_KEY_NAME!r} names the admin keys; pick another")
        for position, model in enumerate(key.models):
            provider, slash, _ = model.partition("/")
            if model != "*" and model not in config.models and model not in adapters and not (slash and provider in config.providers):
                problems.append(f"server.api_keys[{index}].models[{position}]: {model!r} is not a model here")
    policies = {
        "fallbacks": config.fallbacks,
        "context_window_fallbacks": config.context_window_fallbacks,
        "content_policy_fallbacks": config.content_policy_fallbacks,
    }
    for policy, chains in policies.items():
        for model_name, chain in chains.items():
            if model_name not in config.models:
                problems.append(f"{policy}.{model_name}: not a model under `models:`")
            problems += _chain_problems(f"{policy}.{model_name}", chain, config.models)
        cycle = find_cycle(chains)
        if cycle:
            problems.append(f"{policy}: the chains loop: {' -> '.join(cycle)}")
    problems += _chain_problems("default_fallbacks", config.default_fallbacks, config.models)
    problems += _lora_module_problems(config)
    return problems


def _lora_module_problems(config: GatewayConfig) -> list[str]:
    """A configured adapter's name is a model name of its own: not one under ``models:``, nor the upstream ``model``
    a deployment sends to its engine (whose requests the adapter would then take), nor another provider's adapter;
    an encoder takes no adapter."""
    problems = []
    for provider_name, provider in config.providers.items():
        if not isinstance(provider, LocalProviderConfig) or not provider.lora_modules:
            continue
        if serves_embeddings(provider):
            problems.append(f"providers.{provider_name}.lora_modules: an embedding model serves no LoRA adapters")
            continue
        upstream = {d.model for model in config.models.values() for d in model.deployments if d.provider == provider_name}
        for index, module in enumerate(provider.lora_modules):
            where = f"providers.{provider_name}.lora_modules[{index}].name"
            if module.name in config.models:
                problems.append(f"{where}: {module.name!r} is already a model under `models:`; give the adapter another name")
            elif module.name in upstream:
                problems.append(f"{where}: {module.name!r} is the model a deployment sends to {provider_name!r}; "
                                "give the adapter another name")  # fmt: skip
            others = [other for other, entry in config.providers.items() if other != provider_name
                      and isinstance(entry, LocalProviderConfig) and module.name in {m.name for m in entry.lora_modules}]  # fmt: skip
            if others:
                problems.append(f"{where}: {module.name!r} is also an adapter of provider {others[0]!r}")
    return problems


def _cache_problems(model_name: str, model: ModelConfig, config: GatewayConfig) -> list[str]:
    """A semantic cache needs a local embedding model: the one named, else any."""
    if model.cache is None or model.cache.mode != "semantic":
        return []
    encoders = [name for name, p in config.providers.items() if isinstance(p, LocalProviderConfig) and serves_embeddings(p)]
    named = model.cache.embedder
    if named is not None and named not in encoders:
        return [f"models.{model_name}.cache.embedder: {named!r} is not a `type: local` provider with an embedding model"]
    if not encoders:
        return [f"models.{model_name}.cache: semantic mode needs a `type: local` provider with an embedding model "
                "(such as `encoder: {type: local, model: all-minilm-l6-v2}` under providers)"]  # fmt: skip
    return []


def _chain_problems(path: str, chain: list[str], models: Mapping[str, Any]) -> list[str]:
    problems = []
    for index, fallback in enumerate(chain):
        if fallback not in models:
            problems.append(f"{path}[{index}]: {fallback!r} is not a model under `models:`")
    if len(set(chain)) != len(chain):
        problems.append(f"{path}: a model is listed twice")
    return problems


def find_cycle(chains: Mapping[str, list[str]]) -> list[str] | None:
    """A loop in the fallback graph (``[a, b, a]``), or None when the chains end."""
    done: set[str] = set()

    def visit(model: str, path: list[str]) -> list[str] | None:
        if model in path:
            return path[path.index(model) :] + [model]
        if model in done:
            return None
        for fallback in chains.get(model, ()):
            cycle = visit(fallback, path + [model])
            if cycle:
                return cycle
        done.add(model)
        return None

    for model in chains:
        cycle = visit(model, [])
        if cycle:
            return cycle
    return None


def _describe(error: Any) -> str:
    location = ""
    loc = error["loc"]
    if len(loc) >= 3 and loc[0] == "providers" and loc[2] in PROVIDER_SHAPES:
        loc = loc[:2] + loc[3:]  # a provider entry's shape (the union's tag) is not a field of the file
    for part in loc:
        location = f"{location}[{part}]" if isinstance(part, int) else _join(location, str(part))
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    elif error["type"] == "missing":
        message = "required field is missing"
    return f"{location or '(top level)'}: {message}"


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)
