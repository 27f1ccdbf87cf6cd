"""Tests of deploy/: the image definition, the Kubernetes manifests and docs/deployment.md.

deploy/check_manifests.py is a script (`make deploy-check`), not a package module: `checker()`
loads it by path so the tests run exactly what `make deploy-check` runs.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MANIFESTS = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"


@cache
def checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_manifests", DEPLOY / "check_manifests.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# --- the Dockerfile ---------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str  # upper case
    text: str  # the arguments, continuation lines joined
    line: int

    def words(self) -> list[str]:
        return shlex.split(self.text)

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction (None for the shell form)."""
        import json

        start = self.text.find("[")
        if start < 0:
            return None
        try:
            value = json.loads(self.text[start:])
        except ValueError:
            return None
        return [str(part) for part in value] if isinstance(value, list) else None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """ENV KEY=VALUE pairs of the stage, in order (later ones win)."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for word in instruction.words():
                key, _, value = word.partition("=")
                values[key] = value
        return values


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(ARGs before the first FROM, the stages): enough of the syntax for this Dockerfile.

    Comments and parser directives are dropped; a line ending in a backslash continues on the
    next one (comment lines inside a continuation are skipped, as Docker does).
    """
    args: dict[str, str] = {}
    stages: list[Stage] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        joined = " ".join(part for part in pending if part)
        pending = []
        keyword, _, rest = joined.partition(" ")
        instruction = Instruction(keyword.upper(), rest.strip(), start)
        if instruction.keyword == "FROM":
            words = instruction.words()
            base = words[0]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages:
            if instruction.keyword == "ARG":
                key, _, value = instruction.text.partition("=")
                args[key] = value
        else:
            stages[-1].instructions.append(instruction)
    assert not pending, "the Dockerfile ends inside a continued line"
    return args, stages


def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text())


# --- .dockerignore ----------------------------------------------------------------------------


def _pattern(text: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker's patternmatcher reads it: `**` any folders, `*` and
    `?` within one path element."""
    text = text.strip("/")
    out = ""
    index = 0
    while index < len(text):
        if text.startswith("**/", index):
            out += "(?:.*/)?"
            index += 3
        elif text.startswith("**", index):
            out += ".*"
            index += 2
        elif text[index] == "*":
            out += "[^/]*"
            index += 1
        elif text[index] == "?":
            out += "[^/]"
            index += 1
        else:
            out += re.escape(text[index])
            index += 1
    return re.compile(out + r"\Z")


def ignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception `!...`, pattern) for each rule of a .dockerignore, in order."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        rules.append((negated, _pattern(line.lstrip("!").strip())))
    return rules


def kept_by_context(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether a file (path relative to the context) reaches the builder: the last rule that
    matches the path or one of its parent folders decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negated, pattern in rules:
        if any(pattern.match(candidate) for candidate in candidates):
            excluded = not negated
    return not excluded
