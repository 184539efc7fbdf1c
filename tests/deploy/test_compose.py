"""compose.yaml: the gateway wired to its Redis and PostgreSQL, running the commands docs/deployment.md gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.config import GatewayConfig, load_config
from gateway.http.middleware.browser_guard import host_check_for
from tests.deploy.files import ROOT, compose_interpolate, container_command, documented_services, project_version

COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
# What a user puts in .env (compose.yaml says which).
DOT_ENV = {
    "POSTGRES_PASSWORD": "pw-from-dot-env", "SWITCHYARD_ADMIN_KEY": "admin-key-0123456789", "TEAM_A_KEY": "team-a-key-0123456789"
}  # fmt: skip


def service_environment(name: str, environ: dict[str, str]) -> dict[str, str]:
    """A service's `environment:` (mapping or list form) as compose interpolates it from the shell or .env."""
    raw = SERVICES[name].get("environment", {})
    pairs = raw.items() if isinstance(raw, dict) else (entry.split("=", 1) for entry in raw)
    return {key: compose_interpolate(str(value), environ) for key, value in pairs}


def mounted_config() -> tuple[Path, str]:
    """The providers.yaml the gateway is started with: (the file on this side, where the container sees it)."""
    command = SERVICES["gateway"]["command"]
    target = command[command.index("--config") + 1]
    for volume in SERVICES["gateway"]["volumes"]:
        source, mounted, *mode = volume.split(":")
        if mounted == target:
            assert mode == ["ro"], "the config is read, never written"
            return ROOT / source, target
    pytest.fail(f"no volume mounts {target}")


def gateway_config() -> GatewayConfig:
    return load_config(mounted_config()[0], environ=service_environment("gateway", DOT_ENV))


def test_it_has_the_gateway_redis_and_postgres() -> None:
    assert set(SERVICES) == {"gateway", "redis", "postgres"}
    assert (ROOT / SERVICES["gateway"]["build"] / "Dockerfile").is_file()
    assert SERVICES["gateway"]["image"] == f"switchyard:{project_version()}"


def test_each_service_runs_the_image_and_command_the_doc_gives() -> None:
    documented = documented_services()
    assert set(documented) == set(SERVICES)
    for name, service in SERVICES.items():
        image, command = documented[name]
        assert service["image"] == image, name
        if name == "gateway":  # compose's command is the image's CMD: the ENTRYPOINT runs it
            assert "entrypoint" not in service and container_command(service["command"]) == command
        else:
            assert service.get("command") == command, name


def test_the_mounted_config_is_deploys_shared_one_and_parses_with_the_services_environment() -> None:
    source, _ = mounted_config()
    assert source == ROOT / "deploy" / "providers.yaml", "one file for compose and the ConfigMap"
    config = gateway_config()
    assert config.models and config.server.api_keys


def test_redis_url_and_database_url_point_at_the_compose_services() -> None:
    server = gateway_config().server
    assert server.redis_url is not None and server.database_url is not None
    redis = urlsplit(server.redis_url.get_secret_value())
    assert redis.hostname == "redis" and redis.port == 6379
    database = urlsplit(server.database_url.get_secret_value())
    postgres = service_environment("postgres", DOT_ENV)
    assert database.hostname == "postgres" and database.port == 5432
    assert (database.username, database.password, database.path) == (
        postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], "/" + postgres["POSTGRES_DB"]
    )  # fmt: skip


def test_the_keys_must_be_given_and_are_never_defaulted() -> None:
    for missing in DOT_ENV:
        with pytest.raises(KeyError, match=missing):
            service_environment("gateway" if missing != "POSTGRES_PASSWORD" else "postgres",
                                {k: v for k, v in DOT_ENV.items() if k != missing})  # fmt: skip


def test_the_gateway_waits_for_healthy_stores_and_publishes_its_port_on_loopback() -> None:
    gateway = SERVICES["gateway"]
    for store, condition in gateway["depends_on"].items():
        assert condition == {"condition": "service_healthy"} and "healthcheck" in SERVICES[store]
    server = gateway_config().server
    (published,) = gateway["ports"]
    address, host_port, container_port = published.split(":")
    assert address == "127.0.0.1" and int(container_port) == server.port
    # Clients on the host send Host: localhost:8000, those on compose's network gateway:8000: both answered.
    hosts = host_check_for(server.host, server.allowed_hosts)
    assert hosts is not None
    for host in (f"localhost:{host_port}", f"127.0.0.1:{host_port}", f"gateway:{server.port}"):
        assert hosts.allows(host.encode()), host
