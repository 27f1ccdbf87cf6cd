"""Golden files: the expected text of tables the code derives, compared by tests.

A test renders its table as text and calls `assert_golden(name, text)`; any difference from
tests/golden/<name> fails the test with a unified diff. After a change that is meant, refresh
the files and review their diff like any other change:

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_route_table_golden.py
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

GOLDEN_DIR = Path(__file__).resolve().parent
UPDATE_VARIABLE = "UPDATE_GOLDEN"


def updating() -> bool:
    """True when the run should rewrite golden files instead of comparing with them."""
    return os.environ.get(UPDATE_VARIABLE, "") not in ("", "0")


def assert_golden(name: str, actual: str) -> None:
    """Compare `actual` with tests/golden/`name`, or rewrite the file when updating."""
    path = GOLDEN_DIR / name
    if updating():
        if not path.exists() or path.read_text() != actual:
            path.write_text(actual)
        return
    if not path.exists():
        pytest.fail(f"{path} does not exist: create it with {UPDATE_VARIABLE}=1", pytrace=False)
    expected = path.read_text()
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                actual.splitlines(keepends=True),
                fromfile=f"tests/golden/{name} (committed)",
                tofile=f"tests/golden/{name} (now)",
            )
        )
        pytest.fail(
            f"{name} differs from what the code produces now; if the change is meant, "
            f"refresh it with {UPDATE_VARIABLE}=1 and commit the file.\n{diff}",
            pytrace=False,
        )
