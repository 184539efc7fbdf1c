"""The Dockerfile, read instruction by instruction: what it installs, who runs it, what it names exists.

No Docker engine runs here, so the image is never built in the suite: these
hold the file to the code (every path and variable it names) and to the
README's installs. ``test_serve.py`` runs its conversion step and its health
check for real.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from gateway.config import ServerConfig
from gateway.process.settings import ModelSettings, ProcessSettings
from local_engine.default_model import MINILM, SMOLLM2
from tests.deploy import dockerfile
from tests.deploy.files import DEPLOY, ROOT, image_instructions, last

README = (ROOT / "README.md").read_text()
CONSTRAINTS = (ROOT / "constraints.txt").read_text()


def pins() -> dict[str, str]:
    return dict(line.split("==") for line in CONSTRAINTS.splitlines() if "==" in line and not line.startswith("#"))


def variables_before(stop: dockerfile.Instruction) -> dict[str, str]:
    """ARG defaults and ENV values in force at ``stop``, as BuildKit expands them."""
    known: dict[str, str] = {}
    for instruction in image_instructions():
        if instruction is stop:
            break
        if instruction.keyword in ("ARG", "ENV"):
            for name, value in dockerfile.assignments(instruction).items():
                known[name] = dockerfile.expand(value or "", known)
    return known


def runs() -> list[tuple[dockerfile.Instruction, list[str]]]:
    return [(run, command) for run in image_instructions() if run.keyword == "RUN" for command in dockerfile.run_commands(run)]


def pip_installs() -> list[list[str]]:
    return [command for _, command in runs() if command[:2] == ["pip", "install"]]


def test_the_parser_reads_continuations_comments_and_both_forms() -> None:
    parsed = dockerfile.parse(
        "# syntax=docker/dockerfile:1\nfrom python:3.11-slim\nRUN a \\\n  # a comment inside\n  && b\n"
        'CMD ["x", "y"]\nENV A=1 B="two words"\nENV OLD value with spaces\n'
    )
    assert [i.keyword for i in parsed] == ["FROM", "RUN", "CMD", "ENV", "ENV"]
    assert dockerfile.run_commands(parsed[1]) == [["a"], ["b"]]
    assert parsed[2].exec_form == ["x", "y"]
    assert dockerfile.assignments(parsed[3]) == {"A": "1", "B": "two words"}
    assert dockerfile.assignments(parsed[4]) == {"OLD": "value with spaces"}
    with pytest.raises(ValueError, match="heredoc"):
        dockerfile.parse("RUN <<EOF\necho\nEOF\n")


def test_it_starts_from_a_slim_python_the_project_supports() -> None:
    image = last("FROM").words()[0]
    found = re.fullmatch(r"python:(3\.\d+)-slim(-\w+)?", image)
    assert found, f"FROM {image}: a slim Python image"
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert tuple(map(int, found.group(1).split("."))) >= tuple(map(int, required.removeprefix(">=").split(".")))
    assert len([i for i in image_instructions() if i.keyword == "FROM"]) == 1


def test_the_gateway_runs_as_a_numeric_user_that_is_not_root() -> None:
    user = last("USER").text
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or int(gid) != 0), f"USER {user}"
    created = [c for _, c in runs() if c[0] == "useradd"]
    assert created and created[0][created[0].index("--uid") + 1] == uid, "USER is the user the image creates"
    # Every instruction after the last USER runs as it, the model conversion included (its cache is that user's).
    after = image_instructions()[image_instructions().index(last("USER")) :]
    assert any("bake.py convert" in i.text for i in after if i.keyword == "RUN")


def test_the_entry_point_is_switchyard_serve() -> None:
    entrypoint, command = last("ENTRYPOINT").exec_form, last("CMD").exec_form
    assert entrypoint == ["switchyard"] and command == ["serve"], "exec form: signals reach the gateway itself"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["switchyard"] == "gateway.process.cli:main"


def test_the_health_check_is_liveness_on_slash_health_at_loopback() -> None:
    flags, rest = last("HEALTHCHECK").flags()
    assert set(flags) <= {"interval", "timeout", "start-period", "retries"}
    keyword, _, command = rest.partition(" ")
    assert keyword == "CMD"
    code = json.loads(command)[2]
    url = re.search(r"'(http://[^']+)'", code)
    assert url and url.group(1) == "http://127.0.0.1:%s/health", "liveness, not /health/ready: a loading model is alive"
    assert "SWITCHYARD_PORT" in code and str(ServerConfig().port) in code  # the port the gateway binds by default


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps ``path`` (or a folder it is in) out of the build context."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated, pattern = pattern.startswith("!"), pattern.removeprefix("!").strip("/")
        if any(fnmatch.fnmatchcase(prefix, pattern) or fnmatch.fnmatchcase(prefix, pattern.removeprefix("**/"))
               or (pattern.startswith("**/") and fnmatch.fnmatchcase(prefix.rsplit("/", 1)[-1], pattern[3:]))
               for prefix in prefixes):  # fmt: skip
            ignored = not negated
    return ignored


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in patterns if line and not line.startswith("#")]
    copies = [i for i in image_instructions() if i.keyword in ("COPY", "ADD")]
    assert copies and all(i.keyword == "COPY" for i in copies), "COPY, never ADD (no URLs, no unpacking)"
    for copy in copies:
        _, rest = copy.flags()
        *sources, _ = rest.split()
        for source in sources:
            assert (ROOT / source).exists(), f"line {copy.line}: COPY {source}: no such path"
            assert not _ignored(source, patterns), f"line {copy.line}: COPY {source}, which .dockerignore leaves out"
    assert _ignored(".env", patterns) and _ignored(".venv/lib", patterns) and _ignored("gateway/__pycache__/x.pyc", patterns)


def test_the_installs_are_the_readmes_with_constraints_and_the_torch_pin() -> None:
    installs = pip_installs()
    assert installs, "no pip install"
    for command in installs:
        assert command[command.index("-c") + 1] == "constraints.txt", f"{command}: without -c constraints.txt"
    torch = [c for c in installs if any(word.startswith("torch") for word in c)]
    assert len(torch) == 1 and f"torch=={pins()['torch']}" in torch[0], "torch at constraints.txt's pin"
    assert "--index-url" in torch[0], "torch from a chosen index: the CPU build unless told otherwise"
    # The models' packages exactly as the README installs them: --no-deps, the two bundled distributions.
    readme = re.search(r"--no-deps ([\w\- ]+?) &&", README)
    assert readme is not None
    models = [c for c in installs if "--no-deps" in c]
    assert len(models) == 1 and models[0][models[0].index("--no-deps") + 1 :] == readme.group(1).split()
    assert set(readme.group(1).split()) == {SMOLLM2.distribution, MINILM.distribution}
    project = [c for c in installs if any(word.startswith(".[") for word in c)]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert len(project) == 1 and project[0][-1] == ".[postgres,redis,otel,jwt]" and {"postgres", "redis", "otel", "jwt"} <= set(extras)


def test_the_gguf_mtime_is_settled_in_the_layer_that_installs_it() -> None:
    for run in (i for i in image_instructions() if i.keyword == "RUN"):
        commands = dockerfile.run_commands(run)
        if any(SMOLLM2.distribution in command for command in commands):
            assert commands[-1] == ["python", "bake.py", "settle-mtimes"]
            return
    pytest.fail(f"no RUN installs {SMOLLM2.distribution}")


def test_each_arg_is_used_and_the_dtypes_are_ones_the_engine_takes() -> None:
    import torch

    from local_engine.device import resolve_dtype

    instructions = image_instructions()
    args = [(i, name) for i in instructions if i.keyword == "ARG" for name in dockerfile.assignments(i)]
    assert {name for _, name in args} == {"TORCH_INDEX_URL", "CONVERT_DTYPES"}
    for arg, name in args:
        later = instructions[instructions.index(arg) + 1 :]
        assert any(name in dockerfile.referenced(i.text) for i in later), f"ARG {name} is never used"
    dtypes = variables_before(last("USER"))["CONVERT_DTYPES"].split()
    assert dtypes and all(resolve_dtype(dtype, torch.device("cpu")) for dtype in dtypes)
    # `dtype: auto` on a CPU is one of these two (local_engine/device.py): the image must have both.
    assert {"bfloat16", "float32"} <= set(dtypes)


def test_each_env_is_read_by_the_code_as_the_dockerfile_says() -> None:
    """An ENV the code does not read is a setting that does nothing: each one is accounted for here."""
    from local_engine.loader import DEFAULT_CACHE_DIR

    # pydantic-settings reads each field from its prefix and name (gateway/process/settings.py).
    settings = {f"SWITCHYARD_{name.upper()}": (ProcessSettings, name) for name in ProcessSettings.model_fields}
    settings |= {name.upper(): (ModelSettings, name) for name in ModelSettings.model_fields}
    envs = {name: (i, value) for i in image_instructions() if i.keyword == "ENV"
            for name, value in dockerfile.assignments(i).items()}  # fmt: skip
    for name, (instruction, value) in envs.items():
        if name.startswith("SWITCHYARD_") or name in settings:
            assert name in settings, f"ENV {name}: gateway/process/settings.py reads no such variable"
            kind, field = settings[name]
            kind.model_validate({field: value})
        elif name == "HOME":  # the conversion cache: loader.DEFAULT_CACHE_DIR is ~/.cache/switchyard/models
            assert DEFAULT_CACHE_DIR.relative_to(Path.home()) == Path(".cache/switchyard/models")
            created = [c for _, c in runs() if c[0] == "useradd"][0]
            assert created[created.index("--home-dir") + 1] == value
        elif name == "PATH":  # the venv's bin first, where pip put the `switchyard` script
            venvs = [c[3] for _, c in runs() if c[:3] == ["python", "-m", "venv"]]
            assert venvs and value.split(":")[0] == f"{venvs[0]}/bin"
        else:
            pytest.fail(f"ENV {name} (line {instruction.line}): not read by the code as far as this test knows")
    assert envs["SWITCHYARD_HOST"][1] == "0.0.0.0", "in a container, every interface"


def test_the_working_directory_holds_the_default_data_dir_owned_by_the_user() -> None:
    data_dir = Path(last("WORKDIR").text) / ServerConfig().data_dir
    user = last("USER").text.split(":")[0]
    made = [c for _, c in runs() if c[:2] == ["install", "-d"]]
    assert any(c[c.index("-o") + 1] == user and c[-1] == str(data_dir) for c in made), (
        f"{data_dir}: not made for uid {user} (a named volume mounted there copies its owner)"
    )
    assert last("EXPOSE").text == str(ServerConfig().port)


def _bake() -> ModuleType:  # deploy/bake.py is a script the image runs, not a package module
    spec = importlib.util.spec_from_file_location("bake", DEPLOY / "bake.py")
    assert spec is not None and spec.loader is not None
    bake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bake)
    return bake


def test_the_bake_script_finds_the_gguf_the_engine_loads() -> None:
    from local_engine.default_model import default_model_path

    if default_model_path() is None:
        pytest.skip(f"{SMOLLM2.distribution} is not installed")
    bake = _bake()
    assert bake.GGUF_PACKAGE == SMOLLM2.package
    assert bake.ggufs() == [default_model_path()]


def test_settling_an_mtime_keeps_its_whole_seconds(tmp_path: Path) -> None:
    file = tmp_path / "model.gguf"
    file.write_bytes(b"GGUF")
    os.utime(file, ns=(1_700_000_000_123_456_789, 1_700_000_001_987_654_321))
    _bake().settle_mtime(file)
    assert file.stat().st_mtime_ns == 1_700_000_001_000_000_000
    assert file.stat().st_atime_ns == 1_700_000_000_123_456_789
