"""docs/compatibility.md keeps up with OpenAI's spec and with the gateway's own checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.errors import UNSUPPORTED_OPENAI_PATHS
from gateway.http.validation import REQUEST_MODELS
from providers import Endpoint
from tests.support.openai_spec.spec import properties_of

DOC = (Path(__file__).parents[2] / "docs" / "compatibility.md").read_text()

SECTIONS = {
    Endpoint.CHAT: "CreateChatCompletionRequest",
    Endpoint.COMPLETIONS: "CreateCompletionRequest",
    Endpoint.EMBEDDINGS: "CreateEmbeddingRequest",
    Endpoint.MODERATIONS: "CreateModerationRequest",
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


def test_every_messages_field_the_gateway_checks_is_listed() -> None:
    from gateway.http.doors.anthropic_messages import MessagesRequest

    start = DOC.index("## `POST /v1/messages` (Anthropic)")
    listed = set(re.findall(r"`([a-z_]+)`", DOC[start : DOC.find("\n## ", start + 1)]))
    assert set(MessagesRequest.model_fields) <= listed, sorted(set(MessagesRequest.model_fields) - listed)


def test_unsupported_endpoints_are_listed() -> None:
    for path in UNSUPPORTED_OPENAI_PATHS:
        assert path.rstrip("/") in DOC, path


def provider_matrix() -> list[str]:
    """The provider table's rows, as providers/presets.py defines them."""
    from providers import PRESETS
    from providers.params import Translate

    names = list(PRESETS)
    params: list[str] = []
    for preset in PRESETS.values():
        params += [name for name in preset.params if name not in params]

    def cell(name: str, param: str) -> str:
        rule = PRESETS[name].params.get(param)
        if rule is None:
            return "forwarded"
        if isinstance(rule, Translate):
            return f"-> `{rule.to}`"
        allowed = ", ".join(str(v).lower() if isinstance(v, bool) else str(v) for v in rule.allowed)
        return "unsupported" + (f" (except {allowed})" if allowed else "")

    rows = ["| parameter | " + " | ".join(f"`{n}`" for n in names) + " |"]
    rows += [f"| `{param}` | " + " | ".join(cell(n, param) for n in names) + " |" for param in params]
    rows += [
        f"| `POST /v1/{endpoint.value}` | " + " | ".join("✓" if endpoint in PRESETS[n].endpoints else "400" for n in names) + " |"
        for endpoint in Endpoint
    ]
    rows.append("| `batch: {mode: native}` | " + " | ".join(
        "—" if PRESETS[n].batch_discount is None else f"{PRESETS[n].batch_discount:.0%} off" for n in names) + " |")
    return rows


def test_the_provider_table_matches_the_presets() -> None:
    for row in provider_matrix():
        assert row in DOC, f"docs/compatibility.md is missing or differs on: {row}"
