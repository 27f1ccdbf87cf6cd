"""A real gateway in this process, on the real emulator, for the Node clients to call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gemini_gateway.emulator.runner import EmulatorHandle, start_emulator
from gemini_gateway.emulator.settings import EmulatorSettings
from gemini_gateway.server.app import Gateway, start_gateway
from gemini_gateway.server.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def missing(needed: dict[str, str]) -> str:
    """The paths (under the repository root) that do not exist, with the command that makes them."""
    absent = [f"{path} ({fix})" for path, fix in needed.items() if not (ROOT / path).exists()]
    return ", ".join(absent)


@pytest.fixture
async def emulator() -> AsyncIterator[EmulatorHandle]:
    handle = await start_emulator(EmulatorSettings())
    yield handle
    await handle.close()


@pytest.fixture
async def gateway(emulator: EmulatorHandle) -> AsyncIterator[Gateway]:
    gw = await start_gateway(Settings(upstream="emulator", upstream_url=emulator.url, port=0))
    yield gw
    await gw.stop(0)
