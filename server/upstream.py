"""The REST upstream client: sends transcoded calls through a flavour and a transport.

Where a call goes and how it authenticates is the flavour's (flavours.py: Gemini API,
emulator, Vertex AI); how it travels is the transport's (transports.py: aiohttp, httpx).
This module joins the two and turns non-2xx answers into UpstreamError. It also
re-exports the names other modules import from here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from gemini_gateway.server import errors
from gemini_gateway.server.flavours import (
    Flavour,
    GeminiFlavour,
    Metadata,
    VertexFlavour,
    make_flavour,
)
from gemini_gateway.server.routes import HttpCall
from gemini_gateway.server.transports import (
    USER_AGENT,
    AiohttpTransport,
    HttpxTransport,
    Transport,
    UpstreamResponse,
    make_transport,
    timed_out,
)

__all__ = [
    "USER_AGENT",
    "AiohttpTransport",
    "Flavour",
    "GeminiFlavour",
    "HttpxTransport",
    "Metadata",
    "Transport",
    "UpstreamClient",
    "UpstreamResponse",
    "VertexFlavour",
    "make_flavour",
    "make_transport",
]


class UpstreamClient:
    """Sends transcoded calls upstream; non-2xx answers become UpstreamError."""

    def __init__(self, flavour: Flavour, transport: Transport, default_timeout_s: float) -> None:
        self.flavour = flavour
        self._transport = transport
        self._default_timeout_s = default_timeout_s

    async def _open(
        self, call: HttpCall, metadata: Metadata, timeout_s: float | None, stream: bool
    ) -> UpstreamResponse:
        timeout_s = timeout_s if timeout_s is not None else self._default_timeout_s
        if timeout_s <= 0:
            raise timed_out(0)
        call = self.flavour.adapt(call)  # before auth: an unserved call costs no token
        headers = await self.flavour.headers(metadata)
        params = call.query
        body = None
        if call.body is not None:
            body = json.dumps(call.body, separators=(",", ":"), ensure_ascii=False).encode()
            headers["content-type"] = "application/json"
        if stream:
            params = [*params, ("alt", "sse")]
        response = await self._transport.open(
            call.verb, self.flavour.url(call.path), params, body, headers, timeout_s
        )
        if not 200 <= response.status < 300:
            try:
                error_body = await response.read()
            finally:
                await response.close()
            raise errors.from_http_response(response.status, response.content_type, error_body)
        return response

    async def call(self, call: HttpCall, metadata: Metadata, timeout_s: float | None) -> bytes:
        response = await self._open(call, metadata, timeout_s, stream=False)
        try:
            return await response.read()
        finally:
            await response.close()

    @asynccontextmanager
    async def stream(
        self, call: HttpCall, metadata: Metadata, timeout_s: float | None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """Open an SSE stream; yields the body's chunks as they arrive off the network."""
        response = await self._open(call, metadata, timeout_s, stream=True)
        try:
            yield response.iter_chunks()
        finally:
            # Runs on normal end, on error, and when the gRPC call is cancelled.
            with suppress(Exception):
                await response.close()

    async def aclose(self) -> None:
        await self._transport.aclose()
