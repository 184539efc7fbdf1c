"""Configs ``switchyard serve`` builds when it is given no config file.

* No arguments at all: the bundled models, SmolLM2-135M-Instruct for chat
  and completions and all-MiniLM-L6-v2 for embeddings, with no key and no
  network. The embedding model is left out (and the start-up lines say so)
  when its package is not installed.
* ``--model-path P`` (or ``$MODEL_PATH``): that one local model, named
  ``--model-name`` (``$MODEL_NAME``) or after its directory or file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig
from providers.local import MINILM, SMOLLM2

DEFAULT_CHAT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
_GGUF_QUANT_SUFFIXES = (".gguf",)


def default_config() -> GatewayConfig:
    providers: dict[str, Any] = {"smollm2": {"type": "local", "model": SMOLLM2.alias}}
    models: dict[str, Any] = {DEFAULT_CHAT_MODEL: {"deployments": [{"provider": "smollm2", "model": DEFAULT_CHAT_MODEL}]}}
    if MINILM.installed:
        providers["minilm"] = {"type": "local", "model": MINILM.alias}
        models[DEFAULT_EMBEDDING_MODEL] = {"deployments": [{"provider": "minilm", "model": DEFAULT_EMBEDDING_MODEL}]}
    return GatewayConfig.model_validate({"providers": providers, "models": models})


def single_model_config(model_path: str, tokenizer_path: str | None, model_name: str | None) -> GatewayConfig:
    name = model_name or _name_of(model_path)
    provider: dict[str, Any] = {"type": "local", "model": model_path}
    if tokenizer_path:
        provider["tokenizer"] = tokenizer_path
    return GatewayConfig.model_validate({
        "providers": {"local": provider},
        "models": {name: {"deployments": [{"provider": "local", "model": name}]}},
    })  # fmt: skip


def _name_of(model_path: str) -> str:
    path = Path(model_path.rstrip("/"))
    return path.stem if path.suffix.lower() in _GGUF_QUANT_SUFFIXES else path.name
