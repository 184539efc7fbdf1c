"""The config shown in the README loads as printed."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.config import parse_config

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_the_readme_config_is_valid() -> None:
    block = re.search(r"## Configuration\n\n```yaml\n(.*?)```", README, re.S)
    assert block is not None
    config = parse_config(block.group(1), source="README.md", environ={"GROQ_API_KEY": "x"})
    assert config.fallbacks == {"llama-70b": ["gpt-4o-mini"]}


def test_ci_runs_the_readmes_test_command_and_the_run_command_serves_the_bundled_models() -> None:
    run, test = re.findall(r"```bash\n(.*?)\n```", README.split("## Quick start", 1)[1], re.S)[:2]
    ci = (Path(__file__).parents[2] / ".ci" / "run").read_text()
    assert test in ci
    assert run.endswith("switchyard serve")  # no config: the bundled models (tests/providers/local/test_default_models.py)
