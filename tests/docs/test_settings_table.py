"""The README's configuration table names every setting of server/config.py, and no other."""

from __future__ import annotations

import re
from pathlib import Path

from gemini_gateway.server.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def _documented() -> set[str]:
    text = README.read_text()
    table = text[text.index("| setting | environment |") :].split("\n\n", 1)[0]
    names: set[str] = set()
    for row in table.splitlines()[2:]:
        first_cell = row.split("|")[1]
        names.update(re.findall(r"`([a-z_]+)`", first_cell))
    return names


def test_every_setting_is_in_the_readme_table() -> None:
    documented = _documented()
    fields = set(Settings.model_fields)
    assert fields - documented == set(), "settings missing from the README table"
    assert documented - fields == set(), "README rows naming no setting"
