from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, parse_config

MINIMAL = """
providers:
  openai: {type: openai}
  box: {type: custom, base_url: "${BOX_URL:-http://127.0.0.1:8001/v1}", api_key: "${BOX_KEY}"}
models:
  small:
    deployments: [{provider: box, model: tiny}]
"""


def problems_of(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="providers.yaml", environ=environ or {})
    return caught.value.problems


def test_interpolation_defaults_and_presets() -> None:
    config = parse_config(MINIMAL, environ={"BOX_KEY": "k1", "OPENAI_API_KEY": "sk-env"})
    box = config.providers["box"]
    assert box.resolved_base_url == "http://127.0.0.1:8001/v1"
    assert box.api_key is not None and box.api_key.get_secret_value() == "k1"
    # A provider with no api_key takes its preset's variable.
    openai_key = config.providers["openai"].api_key
    assert openai_key is not None and openai_key.get_secret_value() == "sk-env"
    assert config.providers["openai"].resolved_base_url == "https://api.openai.com/v1"
    assert config.server.port == 8000 and config.server.host == "127.0.0.1"


def test_missing_variable_is_named_with_its_field() -> None:
    assert problems_of(MINIMAL) == [
        "providers.box.api_key: environment variable BOX_KEY is not set (write ${BOX_KEY:-default} to allow that)"
    ]


def test_empty_default_means_no_key_and_dollar_escape() -> None:
    text = 'providers: {p: {type: custom, base_url: "http://x/v1", api_key: "${K:-}", headers: {x-cost: "$$5"}}}'
    provider = parse_config(text, environ={}).providers["p"]
    assert provider.api_key is None
    assert provider.headers == {"x-cost": "$5"}


def test_numbers_can_come_from_the_environment() -> None:
    config = parse_config("server: {port: '${PORT:-9001}'}", environ={})
    assert config.server.port == 9001


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("server: {port: 99999}", "server.port: Input should be less than or equal to 65535"),
        ("server: {prot: 1}", "server.prot: unknown field"),
        ("providers: {x: {type: nope, base_url: 'http://a'}}", "providers.x.type: Value error, unknown provider type 'nope'"),
        ("providers: {x: {type: custom}}", "providers.x: Value error, provider type 'custom' needs base_url"),
        ("models: {m: {deployments: []}}", "models.m.deployments: List should have at least 1 item"),
        ("models: {m: {deployments: [{provider: p}]}}", "models.m.deployments[0].model: required field is missing"),
        ("models: {m: {deployments: [{provider: ghost, model: x}]}}",
         "models.m.deployments[0].provider: unknown provider 'ghost'; expected one of: (none configured)"),
        ("fallbacks: {a: [b]}", "fallbacks.a: not a model under `models:`"),
        ("- just\n- a list", "the top level must be a mapping"),
    ],
)
def test_bad_files_name_the_field(text: str, expected: str) -> None:
    assert any(problem.startswith(expected) for problem in problems_of(text)), problems_of(text)


def test_yaml_syntax_error_gives_the_line() -> None:
    problems = problems_of("server:\n  port: [8000\n")
    assert problems[0].startswith("line 3, column 1: not valid YAML")


def test_load_config_reads_files_and_reports_unreadable_ones(tmp_path: Path) -> None:
    path = tmp_path / "providers.yaml"
    path.write_text("server: {port: 8123}\n")
    assert load_config(path, environ={}).server.port == 8123
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "missing.yaml", environ={})
    assert "missing.yaml" in str(caught.value) and "cannot read the file" in str(caught.value)


def test_example_config_starts_on_a_fresh_machine() -> None:
    example = Path(__file__).parents[2] / "config.example.yaml"
    config = load_config(example, environ={})
    assert "gpt-4o-mini" in config.models


def test_config_is_immutable() -> None:
    config = parse_config(MINIMAL, environ={"BOX_KEY": "k"})
    with pytest.raises(Exception):
        config.server.port = 1  # type: ignore[misc]
