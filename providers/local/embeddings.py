"""Embeddings on a sentence encoder in this process (all-MiniLM-L6-v2, any BERT-style directory)."""

from __future__ import annotations

import base64

import orjson

from local_engine import InvalidInput
from local_engine.embeddings import AsyncEmbedder
from providers.base import UpstreamRequest, UpstreamResponse, UpstreamStream
from providers.errors import InvalidLocalRequest
from providers.local.config import LocalProviderConfig
from providers.local.provider import LocalProvider
from providers.local.translate import (
    RequestOrigin,
    decode_openai_token_ids,
    embedding_inputs,
)
from providers.wire import Endpoint, Usage


class LocalEmbeddingProvider(LocalProvider):
    serves = frozenset({Endpoint.EMBEDDINGS})

    def __init__(self, name: str, config: LocalProviderConfig) -> None:
        self.embedder = AsyncEmbedder(
            config.model_name, device=config.device, dtype=config.dtype, load_retries=config.load_retries
        )
        super().__init__(name, config, self.embedder)

    @property
    def max_model_len(self) -> int:
        self._require_ready()
        assert self.embedder.model is not None
        return self.embedder.model.max_length

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        payload, headers = self._prepare(request)
        if payload.get("dimensions") is not None:
            raise InvalidLocalRequest("This local embedding model has a fixed size; drop `dimensions`.", param="dimensions")
        inputs = embedding_inputs(payload)
        try:
            if self._config.input_token_ids == "cl100k_base":
                inputs = decode_openai_token_ids(inputs)
            embedded = await self.embedder.embed(inputs)  # checked before it joins a batch
        except InvalidInput as error:
            raise RequestOrigin(Endpoint.EMBEDDINGS, payload).refusal(error, self.name) from None
        base64_format = payload.get("encoding_format") == "base64"
        data = [
            {
                "object": "embedding",
                "index": index,
                "embedding": base64.b64encode(vector.numpy().tobytes()).decode() if base64_format else vector.tolist(),
            }
            for index, vector in enumerate(embedded.vectors)
        ]
        tokens = sum(embedded.token_counts)
        body = {"object": "list", "data": data, "model": payload["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip
        return UpstreamResponse(200, orjson.dumps(body), headers, Usage(tokens, 0))

    async def open_stream(self, request: UpstreamRequest) -> UpstreamStream:
        # Embeddings are never streamed: the gateway streams only chat and completions.
        self._prepare(request)
        raise InvalidLocalRequest("Embeddings are not streamed; drop `stream`.", param="stream")
