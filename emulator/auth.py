"""API key check, answering like Google when EmulatorSettings.api_key is set."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gemini_gateway.emulator.errors import invalid_api_key, missing_api_key
from gemini_gateway.emulator.recorder import TEST_PREFIX
from gemini_gateway.emulator.settings import SETTINGS_KEY


def request_api_key(request: web.Request) -> str | None:
    """The key from `x-goog-api-key`, else from `?key=` (Google accepts both)."""
    return request.headers.get("x-goog-api-key") or request.query.get("key") or None


@web.middleware
async def api_key_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    expected = request.app[SETTINGS_KEY].api_key
    if expected is not None and not request.path.startswith(TEST_PREFIX):
        key = request_api_key(request)
        if key is None:
            raise missing_api_key()
        if key != expected:
            raise invalid_api_key()
    return await handler(request)
