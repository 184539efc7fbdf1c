"""Switchyard's HTTP gateway: one OpenAI base_url in front of many providers."""

from .app import create_app
from .config import ConfigError, GatewayConfig, load_config

__all__ = ["ConfigError", "GatewayConfig", "create_app", "load_config"]
