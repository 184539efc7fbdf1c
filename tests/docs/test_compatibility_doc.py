"""docs/compatibility.md keeps up with OpenAI's spec and with the gateway's own checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.errors import UNSUPPORTED_OPENAI_PATHS
from gateway.validation import REQUEST_MODELS
from providers import Endpoint
from tests.openapi.spec import properties_of

DOC = (Path(__file__).parents[2] / "docs" / "compatibility.md").read_text()

SECTIONS = {
    Endpoint.CHAT: "CreateChatCompletionRequest",
    Endpoint.COMPLETIONS: "CreateCompletionRequest",
    Endpoint.EMBEDDINGS: "CreateEmbeddingRequest",
}


def section(endpoint: Endpoint) -> str:
    start = DOC.index(f"## `POST /v1/{endpoint.value}`")
    end = DOC.find("\n## ", start + 1)
    return DOC[start:end]


@pytest.mark.parametrize("endpoint", list(SECTIONS))
def test_every_spec_parameter_is_listed(endpoint: Endpoint) -> None:
    listed = set(re.findall(r"`([a-z_]+)`", section(endpoint)))
    missing = properties_of(SECTIONS[endpoint]) - listed
    assert not missing, f"docs/compatibility.md does not list {sorted(missing)} for /v1/{endpoint.value}"


@pytest.mark.parametrize("endpoint", list(SECTIONS))
def test_every_checked_parameter_is_listed(endpoint: Endpoint) -> None:
    listed = set(re.findall(r"`([a-z_]+)`", section(endpoint)))
    checked = set(REQUEST_MODELS[endpoint].model_fields)
    assert checked <= listed, sorted(checked - listed)


def test_unsupported_endpoints_are_listed() -> None:
    for path in UNSUPPORTED_OPENAI_PATHS:
        assert path.rstrip("/") in DOC, path
