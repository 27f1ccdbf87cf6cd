"""`python -m gemini_gateway.emulator` serves until it is told to stop."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from typer.testing import CliRunner

from gemini_gateway.emulator.__main__ import app

ROOT = Path(__file__).resolve().parents[2]
GENERATE = "/v1beta/models/gemini-2.5-flash:generateContent"


@asynccontextmanager
async def serving(*flags: str) -> AsyncIterator[str]:
    """Run the command line with `flags` on a free port; yield its URL; stop it with SIGTERM."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "emulator",
        "--port",
        "0",
        *flags,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode()
        match = re.fullmatch(r"Gemini emulator listening on (http://127\.0\.0\.1:\d+)\n", line)
        assert match, line
        yield match.group(1)
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0


async def test_cli_serves_and_stops() -> None:
    async with serving("--chunk-count", "2", "--fault", "503") as url:
        async with aiohttp.ClientSession() as session:
            body = {"contents": [{"parts": [{"text": "hi"}]}]}
            async with session.post(url + GENERATE, json=body) as resp:
                assert resp.status == 503


async def test_cli_lenient_fields() -> None:
    body = {"contents": [{"parts": [{"text": "hi"}]}], "fooBar": 1}
    async with serving("--lenient-fields") as url, aiohttp.ClientSession() as session:
        async with session.post(url + GENERATE, json=body) as resp:
            assert resp.status == 200
    async with serving() as url, aiohttp.ClientSession() as session:
        async with session.post(url + GENERATE, json=body) as resp:
            assert resp.status == 400


def test_cli_help_and_bad_settings() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for flag in (
        "--host",
        "--port",
        "--chunk-count",
        "--chunk-delay-ms",
        "--headers-delay-ms",
        "--fault",
        "--api-key",
        "--tuning-seconds",
        "--seed",
        "--lenient-fields",
    ):
        assert flag in result.output, flag
    result = runner.invoke(app, ["--fault", "bogus"])
    assert result.exit_code == 2
    assert "unknown emulator fault 'bogus'" in result.output
