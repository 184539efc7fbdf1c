"""A model's ``price:`` in providers.yaml: validated at load, each problem named by its field."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, ModelPrice, parse_config

MODEL = """
providers:
  openai: {{type: openai, api_key: x}}
models:
  gpt-4o:
    price: {price}
    deployments: [{{provider: openai, model: gpt-4o}}]
"""


def problems(price: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(MODEL.format(price=price), source="providers.yaml", environ={})
    return caught.value.problems


def test_a_price_loads_with_unset_cache_rates_left_unset() -> None:
    config = parse_config(MODEL.format(price="{input_per_mtok: 2.5, output_per_mtok: 10}"), environ={})
    assert config.models["gpt-4o"].price == ModelPrice(input_per_mtok=2.5, output_per_mtok=10)
    assert config.models["gpt-4o"].price.cached_input_per_mtok is None  # type: ignore[union-attr]  # the input rate


@pytest.mark.parametrize(
    ("price", "problem"),
    [("{input_per_mtok: 2.5}", "models.gpt-4o.price.output_per_mtok: required field is missing"),
     ("{input_per_mtok: -1, output_per_mtok: 10}", "models.gpt-4o.price.input_per_mtok: Input should be greater than or equal to 0"),
     ("{input_per_mtok: 1, output_per_mtok: .inf}", "models.gpt-4o.price.output_per_mtok: Input should be a finite number"),
     ("{input_per_mtok: 1, output_per_mtok: 2, cached_input_per_mtok: -0.5}",
      "models.gpt-4o.price.cached_input_per_mtok: Input should be greater than or equal to 0"),
     ("{input_per_mtok: 1, output_per_mtok: 2, reasoning_per_mtok: 3}", "models.gpt-4o.price.reasoning_per_mtok: unknown field"),
     ("{input_per_mtok: cheap, output_per_mtok: 2}", "models.gpt-4o.price.input_per_mtok: Input should be a valid number")],
)  # fmt: skip
def test_a_bad_price_is_named_by_its_field(price: str, problem: str) -> None:
    assert any(found.startswith(problem) for found in problems(price)), problems(price)
