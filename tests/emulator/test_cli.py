"""`python -m gemini_gateway.emulator` serves until it is told to stop."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]


async def test_cli_serves_and_stops() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "emulator",
        "--port",
        "0",
        "--chunk-count",
        "2",
        "--fault",
        "503",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode()
        match = re.fullmatch(r"Gemini emulator listening on (http://127\.0\.0\.1:\d+)\n", line)
        assert match, line
        async with aiohttp.ClientSession() as session:
            url = match.group(1) + "/v1beta/models/gemini-2.5-flash:generateContent"
            body = {"contents": [{"parts": [{"text": "hi"}]}]}
            async with session.post(url, json=body) as resp:
                assert resp.status == 503
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
