"""What a new configuration changes: which providers stay, and which changes need a restart."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.config import GatewayConfig, ServerConfig
from providers import Provider

# The ``server:`` fields a reload applies: each is read by a part a generation is built with (the keys,
# the body and header limits, the browser guard, the routes). The rest make the listening socket or
# the process's services (gateway/services.py), and change only at a restart. A new field is here
# only when it is known to reload.
RELOADABLE_SERVER_FIELDS = frozenset({
    "api_keys", "teams", "admin_keys", "jwt", "cors_origins", "allowed_hosts", "max_body_bytes", "max_json_depth",
    "max_model_chars", "max_header_count", "max_header_bytes", "reserve_max_tokens", "status_page",
})  # fmt: skip


def restart_only_changes(old: ServerConfig, new: ServerConfig) -> list[str]:
    """The ``server.*`` fields that differ and that only a restart applies, in the config's order."""
    return [
        f"server.{name}" for name in ServerConfig.model_fields
        if name not in RELOADABLE_SERVER_FIELDS and getattr(old, name) != getattr(new, name)
    ]  # fmt: skip


def kept_providers(old: GatewayConfig, new: GatewayConfig, adapters: Mapping[str, Provider]) -> dict[str, Provider]:
    """The running adapters whose provider entry is the same in ``new``: kept as they are (a local model is not reloaded)."""
    return {
        name: adapters[name] for name, provider in new.providers.items()
        if name in adapters and old.providers.get(name) == provider
    }  # fmt: skip
