"""Each package's errors live in its errors module, drawn once in its docstring, and docs/architecture.md shows the same.

The drawing is checked against the classes themselves: a class missing from
it, drawn under the wrong parent, or drawn but gone fails here.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

PACKAGES = ("gateway", "providers", "local_engine")
ARCHITECTURE = Path(__file__).parents[2] / "docs" / "architecture.md"
# A tree line: box-drawing prefix, then the class name (continuation lines have none).
TREE_LINE = re.compile(r"^(?P<prefix>[ │├└─]*)(?P<name>[A-Z][A-Za-z0-9]*)\b")


def drawing(module: ModuleType) -> str:
    """The ``::`` block of the module's docstring that draws its error tree."""
    doc = inspect.getdoc(module) or ""
    blocks = re.findall(r"::\n\n((?:(?:    .*)?\n)+)", doc + "\n")
    trees = [textwrap.dedent(block).strip("\n") for block in blocks if "──" in block]
    assert len(trees) == 1, f"{module.__name__}: expected one error tree drawn in the docstring, found {len(trees)}"
    return trees[0]


def drawn_parents(tree: str) -> dict[str, str | None]:
    """Each class drawn, with the class drawn as its parent (None for a root)."""
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in tree.splitlines():
        match = TREE_LINE.match(line)
        if match is None:
            continue
        depth, name = len(match["prefix"]), match["name"]
        while stack and stack[-1][0] >= depth:
            stack.pop()
        assert name not in parents, f"{name} is drawn twice"
        parents[name] = stack[-1][1] if stack else None
        stack.append((depth, name))
    return parents


def modules_of(package: str) -> list[ModuleType]:
    root = importlib.import_module(package)
    names = [info.name for info in pkgutil.walk_packages(root.__path__, f"{package}.") if ".__main__" not in info.name]
    return [root, *(importlib.import_module(name) for name in names)]


def exception_classes(module: ModuleType) -> list[type[BaseException]]:
    return [
        value for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == module.__name__
    ]  # fmt: skip


@pytest.mark.parametrize("package", PACKAGES)
def test_every_error_class_lives_in_its_packages_errors_module(package: str) -> None:
    misplaced = [
        f"{module.__name__}.{cls.__name__}"
        for module in modules_of(package)
        if module.__name__ != f"{package}.errors"
        for cls in exception_classes(module)
    ]
    assert not misplaced, f"error classes outside {package}/errors.py: {misplaced}"


@pytest.mark.parametrize("package", PACKAGES)
def test_the_drawing_is_the_tree_of_the_classes(package: str) -> None:
    module = importlib.import_module(f"{package}.errors")
    drawn = drawn_parents(drawing(module))
    classes = exception_classes(module)
    for cls in classes:
        assert cls.__name__ in drawn, f"{cls.__name__} is missing from the drawing in {module.__name__}"
        parent = cls.__bases__[0]
        if drawn[cls.__name__] is None:  # a root: its parent is another module's (Exception, ValueError)
            assert parent.__module__ != module.__name__, f"{cls.__name__} is drawn as a root, but its parent is {parent.__name__}"
        else:
            assert drawn[cls.__name__] == parent.__name__, (
                f"{cls.__name__} is drawn under {drawn[cls.__name__]}, but its parent is {parent.__name__}"
            )
    ancestors = {base.__name__ for cls in classes for base in cls.__mro__}
    gone = sorted(set(drawn) - ancestors)
    assert not gone, f"drawn in {module.__name__} but no such class (or not an ancestor of one): {gone}"


@pytest.mark.parametrize("package", PACKAGES)
def test_architecture_doc_shows_the_same_tree(package: str) -> None:
    tree = drawing(importlib.import_module(f"{package}.errors"))
    assert tree in ARCHITECTURE.read_text(), f"docs/architecture.md does not show {package}.errors' tree as drawn there"


def test_a_wrong_drawing_is_caught() -> None:
    """The checks above can fail: a class drawn under the wrong parent, and one left out."""
    tree = "Exception\n└── ValueError\n    └── KeyError\n"
    assert drawn_parents(tree) == {"Exception": None, "ValueError": "Exception", "KeyError": "ValueError"}
    assert KeyError.__bases__[0].__name__ != drawn_parents(tree)["KeyError"]  # KeyError's parent is LookupError
