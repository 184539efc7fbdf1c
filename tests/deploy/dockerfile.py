"""A Dockerfile read as BuildKit reads its instructions, for what the tests check (no engine runs here).

What it reads, from Docker's Dockerfile reference: one instruction per line,
``\\`` at a line's end continuing it; a line whose first non-blank character
is ``#`` is a comment (parser directives included), inside a continued
instruction too; keywords in any case; a ``[...]`` argument is the JSON exec
form. ``ARG`` and ``ENV`` take ``name=value`` pairs, quoted as a shell
quotes them (``ENV name value``, the old form, too). What it refuses rather
than misread: heredocs (``<<EOF``) and an ``# escape=`` directive.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_VARIABLE = re.compile(rf"\$(?:\{{(?P<braced>{_NAME})(?::-(?P<default>[^}}]*))?\}}|(?P<bare>{_NAME}))")


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    text: str  # what follows the keyword, continuation lines joined with a space
    line: int  # where it starts, 1-based

    @property
    def exec_form(self) -> list[str] | None:
        """The JSON array of ``CMD ["a", "b"]``, or None for the shell form."""
        if not self.text.startswith("["):
            return None
        words = json.loads(self.text)
        assert isinstance(words, list) and all(isinstance(word, str) for word in words), self
        return words

    def words(self) -> list[str]:
        """The arguments as a shell splits them (the exec form's array as it is)."""
        return self.exec_form if self.exec_form is not None else shlex.split(self.text)

    def flags(self) -> tuple[dict[str, str], str]:
        """``--name=value`` flags before the arguments (COPY --chown, HEALTHCHECK --interval), and the text after them."""
        flags: dict[str, str] = {}
        rest = self.text
        while (found := re.match(r"--([a-z-]+)=(\S+)\s+", rest)) is not None:
            flags[found.group(1)] = found.group(2)
            rest = rest[found.end() :]
        return flags, rest


def parse(text: str) -> list[Instruction]:
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if re.match(r"#\s*escape\s*=", line) and not instructions and not pending:
            raise ValueError("an escape directive: not read here")
        if not line or line.startswith("#"):
            continue  # blank and comment lines are dropped, also inside a continued instruction
        if not pending:
            start = number
        continued = line.endswith("\\")
        pending.append(line[:-1].strip() if continued else line)
        if continued:
            continue
        joined = " ".join(part for part in pending if part)
        pending = []
        keyword, _, rest = joined.partition(" ")
        if "<<" in rest and keyword.upper() in ("RUN", "COPY"):
            raise ValueError(f"line {start}: a heredoc: not read here")
        instructions.append(Instruction(keyword.upper(), rest.strip(), start))
    if pending:
        raise ValueError(f"line {start}: the file ends inside a continued instruction")
    return instructions


def read(path: Path) -> list[Instruction]:
    return parse(path.read_text())


def assignments(instruction: Instruction) -> dict[str, str | None]:
    """The names an ARG or ENV sets, with their values (an ARG without a default: None)."""
    if instruction.keyword == "ENV" and "=" not in instruction.text.split(" ", 1)[0]:
        name, _, value = instruction.text.partition(" ")  # the old `ENV name value` form
        return {name: value.strip()}
    pairs: dict[str, str | None] = {}
    for word in shlex.split(instruction.text):
        name, equals, value = word.partition("=")
        pairs[name] = value if equals else None
    return pairs


def expand(text: str, variables: dict[str, str]) -> str:
    """``$NAME``, ``${NAME}`` and ``${NAME:-default}`` replaced as BuildKit replaces them; unknown names: empty."""

    def value(found: re.Match[str]) -> str:
        name = found.group("braced") or found.group("bare")
        known = variables.get(name, "")
        if found.group("default") is not None and not known:
            return found.group("default")
        return known

    return _VARIABLE.sub(value, text)


def referenced(text: str) -> set[str]:
    """The variable names ``text`` refers to."""
    return {found.group("braced") or found.group("bare") for found in _VARIABLE.finditer(text)}


def run_commands(instruction: Instruction) -> list[list[str]]:
    """A shell-form RUN's commands, split at ``&&`` (and ``;``), each as the shell splits its words."""
    assert instruction.keyword == "RUN" and instruction.exec_form is None, instruction
    commands: list[list[str]] = [[]]
    lexer = shlex.shlex(instruction.text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    for word in lexer:
        if word in ("&&", ";", "||"):
            commands.append([])
        else:
            commands[-1].append(word)
    return [command for command in commands if command]
