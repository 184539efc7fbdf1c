"""The deployment files as the tests read them: the Dockerfile, compose.yaml, the kustomizations, the doc."""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.deploy import dockerfile

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
DOC = ROOT / "docs" / "deployment.md"
# The kustomizations: the gateway replicas, and the engine on a GPU node.
KUSTOMIZATIONS = (DEPLOY, DEPLOY / "gpu")
# Files under deploy/ that are not Kubernetes objects.
NOT_MANIFESTS = frozenset({"kustomization.yaml", "providers.yaml", ".yamllint.yaml"})


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]


def project_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def image_instructions() -> list[dockerfile.Instruction]:
    return dockerfile.read(ROOT / "Dockerfile")


def last(keyword: str) -> dockerfile.Instruction:
    found = [instruction for instruction in image_instructions() if instruction.keyword == keyword]
    assert found, f"the Dockerfile has no {keyword}"
    return found[-1]


def container_command(args: list[str]) -> list[str]:
    """What a container of the image runs given ``args`` (compose's `command`, Kubernetes' `args`)."""
    entrypoint = last("ENTRYPOINT").exec_form
    assert entrypoint is not None, "ENTRYPOINT in the exec form: no shell between the signals and the gateway"
    return [*entrypoint, *args]


def doc_text() -> str:
    return DOC.read_text()


def documented_services() -> dict[str, tuple[str, list[str] | None]]:
    """The doc's table of compose services: name -> (image, command; None where it runs the image's own)."""
    rows = re.search(r"\| service \| image \| command \|\n\| --- \| --- \| --- \|\n((?:\|.*\|\n)+)", doc_text())
    assert rows is not None, f"{DOC.name} has no `| service | image | command |` table"
    services: dict[str, tuple[str, list[str] | None]] = {}
    for row in rows.group(1).splitlines():
        name, image, command = (cell.strip() for cell in row.strip("|").split("|"))
        commands = re.findall(r"`([^`]+)`", command)
        services[name.strip("`")] = (re.findall(r"`([^`]+)`", image)[0], shlex.split(commands[0]) if commands else None)
    return services


def documented_secret() -> tuple[str, dict[str, str]]:
    """The doc's `kubectl create secret generic NAME --from-literal=KEY=VALUE ...`: its name and its keys."""
    command = re.search(r"kubectl -n \S+ create secret generic (?:[^\n]*\\\n)*[^\n]*", doc_text())
    assert command is not None, f"{DOC.name} does not say how the Secret is made"
    words = shlex.split(command.group(0).replace("\\\n", " "))
    name = words[words.index("generic") + 1]
    literals = dict(word.removeprefix("--from-literal=").split("=", 1) for word in words if word.startswith("--from-literal="))
    return name, literals


def documented_yaml(title: str) -> dict[str, Any]:
    """The doc's YAML block that follows a line ending with ``title``."""
    block = re.search(re.escape(title) + r"\n\n```yaml\n(.*?)```", doc_text(), re.S)
    assert block is not None, f"{DOC.name} has no YAML block after {title!r}"
    loaded = yaml.safe_load(block.group(1))
    assert isinstance(loaded, dict)
    return loaded


@dataclass(frozen=True)
class Kustomization:
    """A kustomization.yaml, built as ``kubectl apply -k`` would build it, but for the hash in generated names."""

    root: Path
    namespace: str
    resource_files: list[Path]
    resources: list[dict[str, Any]]  # the objects in resource_files
    config_maps: dict[str, dict[str, Path]]  # generated ConfigMap name -> key -> the file it holds

    def generated(self) -> list[dict[str, Any]]:
        """The ConfigMaps configMapGenerator makes."""
        return [
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": self.namespace},
             "data": {key: path.read_text() for key, path in files.items()}}
            for name, files in self.config_maps.items()
        ]  # fmt: skip

    def one(self, kind: str) -> dict[str, Any]:
        found = [resource for resource in self.resources if resource["kind"] == kind]
        assert len(found) == 1, f"{self.root}: {len(found)} objects of kind {kind}"
        return found[0]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [resource for resource in self.resources if resource["kind"] == kind]


def kustomization(root: Path) -> Kustomization:
    spec = yaml.safe_load((root / "kustomization.yaml").read_text())
    assert spec["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and spec["kind"] == "Kustomization"
    # `images:` (kustomize edit set image) renames the image only: nothing these tests read.
    assert set(spec) <= {"apiVersion", "kind", "namespace", "resources", "configMapGenerator", "images"}, (
        f"{root}/kustomization.yaml uses a field these tests do not build: {set(spec)}"
    )
    files = [root / name for name in spec.get("resources", [])]
    config_maps: dict[str, dict[str, Path]] = {}
    for generator in spec.get("configMapGenerator", []):
        assert set(generator) == {"name", "files"}, generator
        entries = (entry.split("=", 1) if "=" in entry else (Path(entry).name, entry) for entry in generator["files"])
        config_maps[generator["name"]] = {key: root / path for key, path in entries}
    return Kustomization(
        root, spec["namespace"], files, [doc for path in files for doc in yaml_documents(path)], config_maps
    )


def manifest_files() -> list[Path]:
    """Every Kubernetes object file under deploy/."""
    return sorted(path for path in DEPLOY.rglob("*.yaml") if path.name not in NOT_MANIFESTS)


def environment(container: dict[str, Any], secret_values: dict[str, str]) -> dict[str, str]:
    """The variables a container starts with: its literal values, its Secret references from ``secret_values``."""
    env: dict[str, str] = {}
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
            continue
        reference = variable["valueFrom"]["secretKeyRef"]
        if reference["key"] in secret_values:
            env[variable["name"]] = secret_values[reference["key"]]
        else:
            assert reference.get("optional"), f"{variable['name']}: the Secret has no key {reference['key']}"
    return env


_COMPOSE_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def compose_interpolate(value: str, environ: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$``; an unset ``:?`` one raises."""

    def substitute(found: re.Match[str]) -> str:
        if found.group(0) == "$$":
            return "$"
        name, operator, word = found.groups()
        if environ.get(name):
            return environ[name]
        if operator and operator.endswith("?"):
            raise KeyError(f"{name}: {word}")
        return word if operator else ""

    return _COMPOSE_VARIABLE.sub(substitute, value)


def config_variables(config: Path) -> dict[str, str | None]:
    """The ``${VAR}`` and ``${VAR:-default}`` in a providers.yaml's string values (as gateway.config reads them,
    comments left out): name -> its default, None when it has none and must be set."""
    found: dict[str, str | None] = {}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            for name, marker, default in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}", value):
                found[name] = default if marker else None

    walk(yaml.safe_load(config.read_text()))
    return found
