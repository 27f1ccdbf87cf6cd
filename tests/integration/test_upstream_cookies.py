"""Cookies an upstream sets never reach a later call: the gateway's HTTP client is shared by
every caller, so a cookie kept from one caller's answer would be sent with another's request.

A small real aiohttp server plays the upstream, under the name `localhost` (cookie jars keep
no cookies for bare IP addresses); each client goes through a real gateway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from aiohttp import web

from gemini_gateway.client.gateway_client import text_request
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2_grpc,
)
from gemini_gateway.server.app import start_gateway
from gemini_gateway.server.config import Settings

pytestmark = pytest.mark.asyncio(loop_scope="session")

ANSWER = {"candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]}}]}


class CookieSettingUpstream:
    """Answers every generate call and sets a cookie; keeps the Cookie header of each call."""

    def __init__(self) -> None:
        self.cookies_received: list[str | None] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://localhost:{self._runner.addresses[0][1]}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.cookies_received.append(request.headers.get("cookie"))
        response = web.json_response(ANSWER)
        response.set_cookie("session", f"given-to-call-{len(self.cookies_received)}", path="/")
        return response


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[CookieSettingUpstream]:
    server = CookieSettingUpstream()
    await server.start()
    yield server
    await server.close()


@pytest.mark.parametrize("http_client", ["aiohttp", "httpx"])
async def test_a_cookie_from_one_answer_is_not_sent_with_the_next_call(
    upstream: CookieSettingUpstream, tmp_path: Path, http_client: str
) -> None:
    settings = Settings(
        upstream="emulator",
        upstream_url=upstream.url,
        port=0,
        http_client=http_client,
        store_url=f"sqlite+aiosqlite:///{tmp_path}/gw.db",
        record_usage=False,
    )
    gateway = await start_gateway(settings)
    try:
        async with grpc.aio.insecure_channel(gateway.target) as channel:
            stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
            before = len(upstream.cookies_received)
            for _ in range(3):
                answer = await stub.GenerateContent(text_request("models/m", "hi"))
                assert answer.candidates[0].content.parts[0].text == "ok"
    finally:
        await gateway.stop(0)
    assert upstream.cookies_received[before:] == [None, None, None]
