"""The docs' code blocks that are neither commands nor Python examples are checked too.

- Every fenced block has a language the docs tests know: `sh` (run by test_readme.py and
  test_doc_commands.py), `python` (examples, test_examples.py), `js` (docs/polyglot.md, run
  by test_doc_commands.py), `toml`, `json`, `text`.
- `toml`: each configuration is one the gateway accepts: it parses, `Settings` loads it from
  `GEMINI_GATEWAY_CONFIG` (with no `GEMINI_GATEWAY_*` variables), every key it sets is a
  setting (unknown keys would be ignored silently), the callers load as at start-up, and a
  `token_sha256` is a whole SHA-256.
- `json` (docs/emulator.md): each error body is what the emulator answers to the request
  named in `ERROR_REQUESTS`; `...` in a shown string stands for text left out.
- `text` under "Filters" (docs/usage.md): every line is a filter the gateway parses.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gemini_gateway.emulator import EmulatorHandle, start_emulator
from gemini_gateway.server.config import Settings
from gemini_gateway.server.filters import parse_filter
from gemini_gateway.server.identity import CallerDirectory
from tests.docs.markdown import DOCS, ROOT, Block, blocks

LANGUAGES = {"sh", "python", "js", "toml", "json", "text"}
ONLY_IN = {"js": ROOT / "docs" / "polyglot.md", "json": ROOT / "docs" / "emulator.md"}

GENERATE = "/v1beta/models/gemini-2.5-flash:generateContent"
VERTEX_GENERATE = (
    "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-flash:generateContent"
)
HELLO = [{"parts": [{"text": "Hello"}]}]
# docs/emulator.md's json blocks in order: for each, the requests whose answers it shows (one
# per JSON value in the block).
ERROR_REQUESTS: list[list[tuple[str, str, Any]]] = [
    [("POST", GENERATE, {"contents": []})],
    [("GET", "/v1beta/nothing", None), ("GET", GENERATE, None)],
    [("POST", GENERATE, {"contents": HELLO, "generationConfig": {"fooBar": 1}})],
    [("POST", VERTEX_GENERATE, {"contents": HELLO, "labels": {"Team": "x"}})],
]


def _all_blocks() -> list[Block]:
    return [block for doc in DOCS for block in blocks(doc)]


def test_every_block_has_a_checked_language() -> None:
    for block in _all_blocks():
        assert block.language in LANGUAGES, f"{block.where}: ```{block.language} is not checked"
        if block.language in ONLY_IN:
            assert block.doc == ONLY_IN[block.language], f"{block.where}: not checked here"


def _keys_exist(shown: Any, loaded: Any, path: str) -> list[str]:
    """Keys of the TOML (`shown`) that the loaded settings (`loaded`, dumped) lack."""
    if isinstance(shown, dict):
        if not isinstance(loaded, dict):
            return [path]
        return [
            problem
            for key, value in shown.items()
            for problem in (
                _keys_exist(value, loaded[key], f"{path}.{key}".lstrip("."))
                if key in loaded
                else [f"{path}.{key}".lstrip(".")]
            )
        ]
    if isinstance(shown, list) and isinstance(loaded, list):
        return [
            problem
            for index, (a, b) in enumerate(zip(shown, loaded, strict=True))
            for problem in _keys_exist(a, b, f"{path}[{index}]")
        ]
    return []


TOML_BLOCKS = [block for block in _all_blocks() if block.language == "toml"]


@pytest.mark.parametrize("block", TOML_BLOCKS, ids=[b.where for b in TOML_BLOCKS])
def test_toml_block_is_a_configuration_the_gateway_loads(
    block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shown = tomllib.loads(block.text)
    for key in [k for k in os.environ if k.startswith("GEMINI_GATEWAY_")]:
        monkeypatch.delenv(key)
    config = tmp_path / "gateway.toml"
    config.write_text(block.text)
    monkeypatch.setenv("GEMINI_GATEWAY_CONFIG", str(config))
    settings = Settings()
    CallerDirectory(settings)
    unknown = _keys_exist(shown, settings.model_dump(), "")
    assert not unknown, f"{block.where}: not settings: {unknown}"
    for digest in re.findall(r'token_sha256\s*=\s*"([^"]*)"', block.text):
        assert re.fullmatch(r"[0-9a-f]{64}", digest), f"{block.where}: {digest!r} is no SHA-256"


def _matches(shown: Any, answered: Any) -> bool:
    """`answered` is `shown`, where `...` inside a shown string stands for any text."""
    if isinstance(shown, dict):
        return (
            isinstance(answered, dict)
            and shown.keys() == answered.keys()
            and all(_matches(shown[key], answered[key]) for key in shown)
        )
    if isinstance(shown, list):
        return (
            isinstance(answered, list)
            and len(shown) == len(answered)
            and all(_matches(a, b) for a, b in zip(shown, answered, strict=True))
        )
    if isinstance(shown, str) and "..." in shown and isinstance(answered, str):
        pattern = ".*".join(re.escape(part) for part in shown.split("..."))
        return re.fullmatch(pattern, answered, re.DOTALL) is not None
    return bool(shown == answered)


def _json_values(block: Block) -> list[Any]:
    """The block as one JSON value, or one per line."""
    try:
        return [json.loads(block.text)]
    except json.JSONDecodeError:
        return [json.loads(line) for line in block.text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
async def emulator() -> AsyncIterator[EmulatorHandle]:
    handle = await start_emulator()
    yield handle
    await handle.close()


async def test_emulator_error_bodies(emulator: EmulatorHandle) -> None:
    shown_blocks = blocks(ROOT / "docs" / "emulator.md", "json")
    assert len(shown_blocks) == len(ERROR_REQUESTS), "a json block without its request"
    async with aiohttp.ClientSession() as http:
        for block, requests in zip(shown_blocks, ERROR_REQUESTS, strict=True):
            values = _json_values(block)
            assert len(values) == len(requests), block.where
            for shown, (method, path, body) in zip(values, requests, strict=True):
                async with http.request(method, emulator.url + path, json=body) as response:
                    answered = await response.json()
                assert response.status == shown["error"]["code"], (block.where, answered)
                assert _matches(shown, answered), f"{block.where}: {method} {path}: {answered}"


def test_filter_examples_parse() -> None:
    found = [
        block
        for block in blocks(ROOT / "docs" / "usage.md", "text")
        if re.search(r"^#+ Filters$", block.before, re.MULTILINE)
    ]
    assert found, "docs/usage.md has no filter examples under Filters"
    for block in found:
        for line in block.text.splitlines():
            text = re.sub(r"\s{2,}#.*$", "", line).strip()
            if text:
                assert parse_filter(text) is not None, f"{block.where}: {line!r}"
