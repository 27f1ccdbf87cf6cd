"""The slim distribution alone, in a fresh virtual environment, calls a running gateway."""

from __future__ import annotations

import asyncio
import json
import subprocess
import venv
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gemini_gateway.server.app import Gateway, start_gateway
from gemini_gateway.server.config import Settings
from tests.packaging.conftest import ROOT


@pytest.fixture(scope="module")
def client_env(tmp_path_factory: pytest.TempPathFactory, client_wheel: Path) -> Path:
    """A new venv holding the client wheel and what its metadata asks for, nothing else."""
    env = tmp_path_factory.mktemp("client-env")
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", client_wheel],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return python


@pytest.fixture(scope="module")
async def gateway() -> AsyncIterator[Gateway]:
    gw = await start_gateway(Settings(upstream="emulator", port=0))
    yield gw
    await gw.stop(0)


async def _run(python: Path, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        str(python), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode(), err.decode()


async def test_consumer_example_calls_gateway(client_env: Path, gateway: Gateway) -> None:
    code, out, err = await _run(
        client_env, str(ROOT / "examples" / "typed_consumer.py"), "--target", gateway.target
    )
    assert code == 0, err
    assert out.startswith("async: '"), out
    assert "chunk:" in out
    assert "sync: total_tokens = " in out
    assert "models: models/" in out


async def test_client_env_has_no_server_side_packages(client_env: Path) -> None:
    probe = (
        "import importlib.util as u, json;"
        "names = ['gemini_gateway.client', 'gemini_gateway.generated', 'gemini_gateway.server',"
        " 'gemini_gateway.emulator', 'gemini_gateway.cli', 'aiohttp', 'matplotlib',"
        " 'prometheus_client', 'typer'];"
        "print(json.dumps({n: u.find_spec(n) is not None for n in names}))"
    )
    code, out, err = await _run(client_env, "-c", probe)
    assert code == 0, err
    found = json.loads(out)
    assert found.pop("gemini_gateway.client") and found.pop("gemini_gateway.generated")
    assert not any(found.values()), found
