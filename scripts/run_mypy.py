"""Run mypy over the packages as they are installed (`make mypy`).

The repository keeps its folders (server/, client/, client/cli/, emulator/, generated/) while
everything installs under the one `gemini_gateway` import package, mapped by setuptools'
`package-dir`. An editable install resolves that mapping with an import hook, which mypy cannot
follow. This script reads the same mapping from pyproject.toml and client/pyproject.toml and
links each listed package's modules (.py, .pyi, py.typed) into build/mypy/gemini_gateway/...,
so mypy (with `mypy_path = build/mypy`) sees the packages exactly as an installation would:
a folder that is no package (client/build, server/data) or a package of another name
(client/cli is `gemini_gateway.cli`, not `gemini_gateway.client.cli`) is left out.

Then it runs mypy with the [tool.mypy] configuration of pyproject.toml (extra arguments are
passed on) and reports each file by its path in the repository, not by its link. Once the
tree exists, `python -m mypy` works as well; `--tree-only` just (re)creates the tree.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "mypy"
PROJECTS = (ROOT / "pyproject.toml", ROOT / "client" / "pyproject.toml")
SUFFIXES = (".py", ".pyi")
LINKED_PATH = re.compile(r"^build/mypy/\S+?\.pyi?(?=:)", re.MULTILINE)


def packages_of(pyproject: Path) -> dict[str, Path]:
    """Each package the project installs, with the folder its modules come from."""
    setuptools = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]
    mapping: dict[str, str] = setuptools.get("package-dir", {})
    folders = {}
    for package in setuptools["packages"]:
        parts = package.split(".")
        for cut in range(len(parts), 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in mapping:
                base = pyproject.parent / mapping[prefix]
                folders[package] = base.joinpath(*parts[cut:])
                break
        else:
            folders[package] = pyproject.parent.joinpath(*parts)
    return folders


def build_tree(tree: Path = TREE) -> int:
    """(Re)create the link tree; returns the number of linked files."""
    if tree.exists():
        shutil.rmtree(tree)
    linked = 0
    for pyproject in PROJECTS:
        for package, folder in packages_of(pyproject).items():
            if not folder.is_dir():
                sys.exit(f"{pyproject.relative_to(ROOT)}: {package}: no folder {folder}")
            target = tree.joinpath(*package.split("."))
            target.mkdir(parents=True, exist_ok=True)
            for source in sorted(folder.iterdir()):
                if source.is_file() and (source.suffix in SUFFIXES or source.name == "py.typed"):
                    (target / source.name).symlink_to(source.resolve())
                    linked += 1
    return linked


def _real_path(match: re.Match[str]) -> str:
    return os.path.relpath(os.path.realpath(ROOT / match.group(0)), ROOT)


def run_mypy(args: list[str]) -> int:
    from mypy import api

    stdout, stderr, status = api.run(args)
    sys.stdout.write(LINKED_PATH.sub(_real_path, stdout))
    sys.stderr.write(LINKED_PATH.sub(_real_path, stderr))
    return status


def main(args: list[str]) -> int:
    os.chdir(ROOT)
    count = build_tree()
    if args[:1] == ["--tree-only"]:
        print(f"{TREE.relative_to(ROOT)}: {count} files linked")
        return 0
    return run_mypy(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
