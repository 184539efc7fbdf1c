"""Load a model from disk into the engine: weights, tokenizer, stop tokens, context length.

Sources, all local (no hub is ever contacted)::

    None or "smollm2"      the bundled GGUF (see default_model.py)
    path/to/model.gguf     dequantised by transformers, then cached as a model directory
    path/to/model_dir/     config.json + *.safetensors + tokenizer files

A GGUF is converted once: its dequantised weights, config, tokenizer and
generation config are written to ``<cache_dir>/<key>`` and later loads read
that directory, which takes seconds instead of the conversion's tens of
seconds. The key names the file (path, size, mtime) and the stored dtype, so
a replaced file or a different dtype gets its own conversion.

transformers builds its model object from the directory; the engine copies
(and fuses) its weights into :class:`LlamaForCausalLM` and drops it.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
)

from .default_model import DEFAULT_MODEL_ALIAS, SMOLLM2, default_model_path
from .device import resolve_device, resolve_dtype
from .model import SUPPORTED_MODEL_TYPES, LlamaForCausalLM

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "switchyard" / "models"
# A GGUF file name usually ends in its quantisation ("-Q4_K_M", ".Q4_1", ".f16"); the model's name is what precedes it.
_QUANT_SUFFIX = re.compile(r"[.\-_](?:i?q\d\w*|f16|f32|bf16)$", re.IGNORECASE)


# transformers' loading changes process-wide state while it builds a model:
# ``torch.set_default_dtype`` (local_torch_dtype), ``PreTrainedModel.tie_weights``
# swapped for a no-op class attribute (initialization.no_tie_weights), the
# ``torch.nn.init`` functions (guard_torch_init_functions), ``torch.linspace``.
# Each is saved, patched and restored by a context manager, so two loads on two
# threads interleave into saving each other's patch as "the original": one
# load then ties nothing (``lm_head.weight | MISSING``, a meta tensor), and the
# no-op stays installed for every later load in the process. Every call into
# transformers that builds a model, in the loader and the embedder alike, holds
# this lock; tokenizers and the engine's own model touch none of that state.
_TRANSFORMERS_BUILD_LOCK = threading.Lock()


@contextmanager
def transformers_building() -> Iterator[None]:
    """Hold while transformers builds or loads a model object (see _TRANSFORMERS_BUILD_LOCK)."""
    with _TRANSFORMERS_BUILD_LOCK:
        yield


def check_materialised(model: torch.nn.Module, where: Path) -> None:
    """A load error, not a silent random head, when transformers left a weight unloaded or an untied head.

    ``tie_word_embeddings`` means the head *is* the input embedding; a head
    with its own storage would be freshly initialised noise.
    """
    on_meta = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
    if on_meta:
        raise ValueError(f"{where}: weights were left unloaded: {', '.join(on_meta[:3])}")
    config = getattr(model, "config", None)
    get_output = getattr(model, "get_output_embeddings", None)
    head = get_output() if get_output is not None else None
    if head is not None and getattr(config, "tie_word_embeddings", False):
        if head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
            raise ValueError(f"{where}: the config ties the LM head to the embeddings, but the loaded head is not tied")


@dataclass(frozen=True, slots=True)
class LoadedModel:
    model: LlamaForCausalLM
    tokenizer: transformers.PreTrainedTokenizerBase
    name: str  # e.g. "SmolLM2-135M-Instruct"
    eos_token_ids: frozenset[int]  # any of them ends a sequence
    max_model_len: int  # prompt + output tokens one sequence may hold
    model_dir: Path  # the transformers directory the weights came from (for a GGUF, its converted copy)


def load_model(
    source: str | os.PathLike[str] | None = None,
    *,
    dtype: str = "auto",
    device: str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    tokenizer: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """Load ``source`` (a model directory, a ``.gguf`` file, ``"smollm2"`` or None for the default) for the engine.

    ``tokenizer``: a tokenizer directory to use instead of the model's own.
    """
    quiet_progress_unless_terminal()
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    path = _resolve_source(source)
    if path.is_dir():
        name, model_dir = path.name, path
        logger.info("loading model directory %s (%s on %s)", path, torch_dtype, torch_device)
    elif path.suffix.lower() == ".gguf":
        name = _QUANT_SUFFIX.sub("", path.stem)
        model_dir = _gguf_as_directory(path, torch_dtype, Path(cache_dir) if cache_dir else DEFAULT_CACHE_DIR)
    else:
        raise ValueError(f"{path} is neither a model directory nor a .gguf file")
    tokenizer_dir = Path(tokenizer).expanduser() if tokenizer is not None else model_dir
    return _load_directory(model_dir, name, torch_dtype, torch_device, tokenizer_dir)


def quiet_progress_unless_terminal() -> None:
    """transformers' progress bars on a terminal; in a log file they are noise, and the log lines say the same."""
    if not sys.stderr.isatty():
        transformers.utils.logging.disable_progress_bar()


def _resolve_source(source: str | os.PathLike[str] | None) -> Path:
    if source is None or str(source) == DEFAULT_MODEL_ALIAS:
        path = default_model_path()
        if path is None:
            raise FileNotFoundError(f"no model given and the default one is not installed: {SMOLLM2.install_hint}")
        return path
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path} (models load from local files only)")
    return path


def _load_directory(
    model_dir: Path, name: str, dtype: torch.dtype, device: torch.device, tokenizer_dir: Path
) -> LoadedModel:
    started = time.perf_counter()
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    _check_supported(config, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    with transformers_building():
        hf_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, local_files_only=True)
    check_materialised(hf_model, model_dir)
    model = LlamaForCausalLM.from_transformers(hf_model, dtype, device)
    eos_token_ids = _eos_token_ids(hf_model.generation_config, config, tokenizer)
    del hf_model
    gc.collect()

    max_model_len = model.max_position_embeddings
    if model.sliding_window is not None:
        max_model_len = min(max_model_len, model.sliding_window)
    logger.info("loaded %s from %s in %.1fs", name, model_dir, time.perf_counter() - started)
    return LoadedModel(model, tokenizer, name, eos_token_ids, max_model_len, model_dir)


def _check_supported(config: Any, where: Path) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{where}: model type {model_type!r} is not supported ({', '.join(sorted(SUPPORTED_MODEL_TYPES))})"
        )


def _eos_token_ids(generation_config: GenerationConfig | None, config: Any, tokenizer: Any) -> frozenset[int]:
    """Every token id any of the three sources calls end-of-sequence (chat models often list several)."""
    ids: set[int] = set()
    for value in (
        getattr(generation_config, "eos_token_id", None),
        getattr(config, "eos_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
    ):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(token_id) for token_id in value)
    return frozenset(ids)


def _gguf_as_directory(path: Path, dtype: torch.dtype, cache_root: Path) -> Path:
    """The model directory converted from ``path``; converting it now if no earlier load did."""
    stat = path.stat()
    # Hashing the file's identity, not its bytes: reading gigabytes to find a cache hit would cost what the cache saves.
    identity = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    dtype_name = str(dtype).removeprefix("torch.")
    key = f"{_QUANT_SUFFIX.sub('', path.stem)}-{hashlib.sha256(identity).hexdigest()[:16]}-{dtype_name}"
    target = cache_root / key
    if (target / "config.json").is_file():
        logger.info("GGUF %s: using the cached conversion in %s", path.name, target)
        return target

    logger.info("GGUF %s: converting to %s (first load; later loads use the cache)", path.name, target)
    started = time.perf_counter()
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = cache_root / f".{key}.{os.getpid()}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _convert_gguf(path, dtype, staging)
        try:
            # The rename publishes the directory whole: a crash mid-conversion leaves only a .partial behind.
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
            # Another process finished the same conversion first; its copy is as good as ours.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("GGUF %s: converted in %.1fs", path.name, time.perf_counter() - started)
    return target


def _convert_gguf(path: Path, dtype: torch.dtype, out_dir: Path) -> None:
    """Write ``path`` as a transformers model directory, weights dequantised to ``dtype``.

    ``from_pretrained(gguf_file=...)`` would do this in one call but requires
    the ``accelerate`` package; transformers' GGUF reader underneath it does
    not. It only needs a weightless (meta) model to map tensor names.
    """
    from safetensors.torch import save_file
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    _check_supported(config, path)
    with transformers_building():
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
        tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=skeleton, torch_dtype=dtype)
    tensors = tensors["tensors"]
    expected = set(skeleton.state_dict())
    if config.tie_word_embeddings:
        expected.discard("lm_head.weight")
        tensors.pop("lm_head.weight", None)
    missing = expected - set(tensors)
    if missing:
        raise ValueError(f"{path}: GGUF lacks tensors {sorted(missing)[:5]}")

    out_dir.mkdir(parents=True)
    save_file(
        {name: tensor.contiguous() for name, tensor in tensors.items()}, out_dir / "model.safetensors", {"format": "pt"}
    )
    config.dtype = dtype
    config.save_pretrained(out_dir)
    GenerationConfig.from_model_config(config).save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True).save_pretrained(out_dir)
