"""Switchyard's HTTP gateway: one OpenAI base_url in front of many providers."""

from gateway.app import create_app
from gateway.config import ConfigError, GatewayConfig, load_config

__all__ = ["ConfigError", "GatewayConfig", "create_app", "load_config"]
