"""Sentence embeddings on a local encoder (BERT-style), batched across requests.

The default model is all-MiniLM-L6-v2, which a pip package ships with its
weights (``default_model.MINILM``). Embeddings are the mean of the last hidden
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
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer

from .default_model import EMBEDDING_ALIAS, MINILM, default_embedding_model_path, is_embedding_model
from .device import resolve_device, resolve_dtype
from .errors import InvalidInput
from .inputs import check_token_ids, describe, is_token_ids
from .loader import (
    check_materialised,
    quiet_progress_unless_terminal,
    transformers_building,
)
from .worker import ModelThread, settle

logger = logging.getLogger(__name__)

MAX_BATCH_INPUTS = 64  # inputs per forward pass: its memory is bounded by this, whatever a request holds
MAX_INPUTS_PER_REQUEST = 2048  # OpenAI's own limit on one embeddings request


def _resolve(source: str) -> Path:
    if source == EMBEDDING_ALIAS:
        path = default_embedding_model_path()
        if path is None:
            raise FileNotFoundError(f"{EMBEDDING_ALIAS} is not installed: {MINILM.install_hint}")
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

    @property
    def vocab_size(self) -> int:
        """Rows of the word-embedding matrix, which token-id inputs index."""
        return int(self.model.get_input_embeddings().num_embeddings)

    def check_inputs(self, inputs: Sequence[str | Sequence[int]]) -> None:
        """InvalidInput (``param`` "input", ``position`` the input's index, then the token's) for the first input
        the model cannot take. Inputs are embedded in batches across requests: checked before, a bad one fails alone.
        """
        if not isinstance(inputs, (list, tuple)) or not inputs:
            raise InvalidInput("`input` must be a non-empty list of texts or token id lists.", param="input")
        for index, item in enumerate(inputs):
            if isinstance(item, str):
                continue
            if not is_token_ids(item):
                raise InvalidInput(
                    f"An input is a text or a list of token ids; got {describe(item)}.", param="input", position=(index,)
                )
            if not item:
                raise InvalidInput("An input must not be empty.", param="input", position=(index,))
            check_token_ids(item, self.vocab_size, param="input", where="an input", position=(index,))

    @torch.inference_mode()
    def embed(self, inputs: Sequence[str | Sequence[int]]) -> Embedded:
        """Embed texts, or token id lists of this model's tokenizer; longer inputs are truncated."""
        self.check_inputs(inputs)
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


@dataclass(eq=False, slots=True)
class _EmbedRequest:
    """One caller's inputs, embedded a slice at a time; ``done`` inputs have their vectors in ``parts``."""

    inputs: Sequence[str | Sequence[int]]
    future: asyncio.Future[Embedded]
    done: int = 0
    parts: list[Embedded] = field(default_factory=list)

    def settle(self, result: Embedded | None, error: BaseException | None) -> None:
        self.future.get_loop().call_soon_threadsafe(settle, self.future, result, error)


class AsyncEmbedder(ModelThread):
    """``await embedder.embed(inputs)`` from an event loop; the model runs on its own thread, batched.

    A forward pass takes at most MAX_BATCH_INPUTS inputs, from as many
    requests as fit; a request with more is embedded a slice per pass and
    goes to the back of the queue between slices, so its memory stays
    bounded and the small requests behind it are not held up for its whole
    length.
    """

    thread_name = "switchyard-embedder"
    what = "embedding model"

    def __init__(self, source: str, *, device: str = "auto", dtype: str = "auto", load_retries: int = 2) -> None:
        super().__init__(load_retries=load_retries)
        self._source, self._device, self._dtype = source, device, dtype
        self.model: EmbeddingModel | None = None
        self._pending: deque[_EmbedRequest] = deque()

    async def embed(self, inputs: Sequence[str | Sequence[int]]) -> Embedded:
        if len(inputs) > MAX_INPUTS_PER_REQUEST:
            raise InvalidInput(
                f"An embeddings request takes at most {MAX_INPUTS_PER_REQUEST} inputs; this one has {len(inputs)}.",
                param="input",
            )
        if self.model is not None:
            self.model.check_inputs(inputs)  # before joining a batch, which one bad input would fail whole
        request = _EmbedRequest(inputs, asyncio.get_running_loop().create_future())
        with self._wake:
            self._pending.append(request)
            self._wake.notify()
        return await request.future

    def _load(self) -> None:
        self.model = EmbeddingModel(self._source, device=self._device, dtype=self._dtype)

    def _tokenizer(self) -> Any:
        assert self.model is not None
        return self.model.tokenizer

    def _serve(self) -> None:
        while self._running:
            with self._wake:
                while self._running and not self._pending:
                    self._wake.wait()
                batch = self._take_batch()
            if batch:
                self._embed_batch(batch)

    def _take_batch(self) -> list[tuple[_EmbedRequest, int, int]]:
        """Slices ``(request, start, end)`` of the queued requests, MAX_BATCH_INPUTS inputs in all.

        Every queued request first gets an equal share of the pass (at least
        one input, in queue order), then what is left goes in queue order: a
        small request never waits behind a large one for more than the pass
        in flight. A request not finished by its slice goes to the back.
        """
        if not self._pending:  # woken to stop
            return []
        slices: dict[_EmbedRequest, list[int]] = {}  # request -> [start, end], in queue order
        room = MAX_BATCH_INPUTS
        share = max(1, MAX_BATCH_INPUTS // len(self._pending))
        for limit in (share, MAX_BATCH_INPUTS):
            for request in self._pending:
                if not room:
                    break
                span = slices.setdefault(request, [request.done, request.done])
                grown = min(len(request.inputs), span[1] + min(room, limit - (span[1] - span[0])))
                room -= max(0, grown - span[1])
                span[1] = max(span[1], grown)
        taken = [(request, start, end) for request, (start, end) in slices.items() if end > start]
        for request, _, end in taken:
            request.done = end
        finished = {request for request, _, end in taken if end == len(request.inputs)}
        untouched = [request for request in self._pending if request not in slices]
        unfinished = [request for request, _, _ in taken if request not in finished]
        self._pending = deque(untouched + unfinished)
        return taken

    def _embed_batch(self, batch: list[tuple[_EmbedRequest, int, int]]) -> None:
        assert self.model is not None
        inputs = [item for request, start, end in batch for item in request.inputs[start:end]]
        try:
            embedded = self.model.embed(inputs)
        except Exception as error:
            failed = {request for request, _, _ in batch}
            with self._wake:  # the rest of a failed request is not worth embedding
                self._pending = deque(request for request in self._pending if request not in failed)
            for request in failed:
                request.settle(None, error)
            return
        offset = 0
        for request, start, end in batch:
            following = offset + end - start
            request.parts.append(Embedded(embedded.vectors[offset:following], embedded.token_counts[offset:following]))
            offset = following
            if end == len(request.inputs):
                parts = request.parts
                whole = parts[0] if len(parts) == 1 else Embedded(
                    torch.cat([part.vectors for part in parts]), [n for part in parts for n in part.token_counts]
                )
                request.settle(whole, None)
