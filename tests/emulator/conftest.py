"""Fixtures: a real emulator on a loopback port and an HTTP client for it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gemini_gateway.emulator import EmulatorHandle, EmulatorSettings, start_emulator

GENERATE = "/v1beta/models/gemini-2.5-flash:generateContent"
STREAM_SSE = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
STREAM_ARRAY = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"


def user(text: str) -> dict[str, Any]:
    """A one-turn request body."""
    return {"contents": [{"role": "user", "parts": [{"text": text}]}]}


def parse_sse(raw: str) -> list[str]:
    """The payloads of `data:` events; asserts Google's exact framing."""
    assert raw.endswith("\r\n\r\n")
    events = raw.split("\r\n\r\n")[:-1]
    payloads = []
    for event in events:
        assert event.startswith("data: "), event
        assert "\n" not in event
        payloads.append(event[len("data: ") :])
    return payloads


@pytest.fixture
async def emulator() -> AsyncIterator[EmulatorHandle]:
    handle = await start_emulator(EmulatorSettings(tuning_seconds=0.5))
    yield handle
    await handle.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Api:
    """Small helper around the client session, bound to one emulator."""

    def __init__(self, handle: EmulatorHandle, session: aiohttp.ClientSession) -> None:
        self.handle = handle
        self.session = session

    def url(self, path: str) -> str:
        return self.handle.url + path

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, str]:
        """Status, parsed JSON (None when not JSON) and raw text of one exchange."""
        async with self.session.request(method, self.url(path), json=body, headers=headers) as resp:
            text = await resp.text()
            try:
                data = json.loads(text)
            except ValueError:
                data = None
            return resp.status, data, text

    async def post(self, path: str, body: Any, **kwargs: Any) -> tuple[int, Any, str]:
        return await self.call("POST", path, body, **kwargs)

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any, str]:
        return await self.call("GET", path, **kwargs)


@pytest.fixture
def api(emulator: EmulatorHandle, http: aiohttp.ClientSession) -> Api:
    return Api(emulator, http)
