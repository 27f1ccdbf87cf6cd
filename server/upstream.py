"""The REST upstream client: sends transcoded calls through a flavour and a transport.

Where a call goes and how it authenticates is the flavour's (flavours.py: Gemini API,
emulator, Vertex AI); how it travels is the transport's (transports.py: aiohttp, httpx).
This module joins the two and turns non-2xx answers into UpstreamError. It also
re-exports the names other modules import from here.

Credentials travel only in headers (`x-goog-api-key`, `authorization`), never in the URL,
and each is registered for redaction (redaction.py) before the request leaves, so that no
error made while serving the call can quote it, whatever the upstream echoes.

Time limits: a call with a gRPC deadline gets what is left of it; one without gets
`default_timeout_s` (setting upstream_timeout_s) when unary and `stream_timeout_s`
(upstream_stream_timeout_s) for a whole stream.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from gemini_gateway.server import errors, redaction
from gemini_gateway.server.flavours import (
    Flavour,
    GeminiFlavour,
    Metadata,
    VertexFlavour,
    make_flavour,
)
from gemini_gateway.server.routes import HttpCall
from gemini_gateway.server.sse import SseReader
from gemini_gateway.server.transports import (
    ERROR_BODY_BYTES,
    USER_AGENT,
    AiohttpTransport,
    BodyLimits,
    HttpxTransport,
    Transport,
    UpstreamResponse,
    make_transport,
    timed_out,
)

__all__ = [
    "USER_AGENT",
    "AiohttpTransport",
    "BodyLimits",
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

    def __init__(
        self,
        flavour: Flavour,
        transport: Transport,
        default_timeout_s: float,
        *,
        stream_timeout_s: float | None = None,
        limits: BodyLimits | None = None,
    ) -> None:
        self.flavour = flavour
        self._transport = transport
        self._default_timeout_s = default_timeout_s
        self._stream_timeout_s = default_timeout_s if stream_timeout_s is None else stream_timeout_s
        self.limits = limits or getattr(transport, "limits", None) or BodyLimits()

    async def _open(
        self, call: HttpCall, metadata: Metadata, timeout_s: float | None, stream: bool
    ) -> UpstreamResponse:
        if timeout_s is None:
            timeout_s = self._stream_timeout_s if stream else self._default_timeout_s
        if timeout_s <= 0:
            raise timed_out(0)
        call = self.flavour.adapt(call)  # before auth: an unserved call costs no token
        headers = await self.flavour.headers(metadata)
        redaction.remember_sent(headers, metadata)  # before anything can echo them
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
                error_body, _cut = await response.read_prefix(ERROR_BODY_BYTES)
            finally:
                await response.close()
            raise errors.from_http_response(response.status, response.content_type, error_body)
        return response

    async def call(self, call: HttpCall, metadata: Metadata, timeout_s: float | None) -> bytes:
        """The body of a unary answer (at most limits.max_body_bytes)."""
        response = await self._open(call, metadata, timeout_s, stream=False)
        try:
            return await response.read()
        finally:
            await response.close()

    @asynccontextmanager
    async def stream(
        self, call: HttpCall, metadata: Metadata, timeout_s: float | None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """Open an SSE stream; yields the body's chunks as they arrive off the network.

        An UpstreamError raised inside the block (by whoever parses the events) leaves it
        with the call's secrets redacted, wherever it was built.
        """
        try:
            response = await self._open(call, metadata, timeout_s, stream=True)
        except errors.UpstreamError as exc:
            raise exc.redact(redaction.current(self._call_secrets(metadata))) from None
        try:
            yield response.iter_chunks()
        except errors.UpstreamError as exc:
            raise exc.redact(redaction.current(self._call_secrets(metadata))) from None
        finally:
            # Runs on normal end, on error, and when the gRPC call is cancelled.
            with suppress(Exception):
                await response.close()

    @asynccontextmanager
    async def stream_events(
        self, call: HttpCall, metadata: Metadata, timeout_s: float | None
    ) -> AsyncIterator[AsyncIterator[str]]:
        """Open an SSE stream; yields each event's data as soon as its last byte arrives.

        One event may hold at most limits.max_sse_event_bytes (RESOURCE_EXHAUSTED past it).
        """
        async with self.stream(call, metadata, timeout_s) as chunks:
            yield sse_events(chunks, SseReader(self.limits.max_sse_event_bytes))

    @staticmethod
    def _call_secrets(metadata: Metadata) -> list[str]:
        found = redaction.caller_credentials(metadata)
        return [
            secret
            for name, value in found.items()
            for secret in redaction.header_secrets(name, value)
        ]

    async def aclose(self) -> None:
        await self._transport.aclose()


async def sse_events(chunks: AsyncIterator[bytes], reader: SseReader) -> AsyncIterator[str]:
    """Each SSE event's data as soon as its last byte arrives, then what the end completes."""
    async for chunk in chunks:
        for payload in reader.feed(chunk):
            yield payload
    for payload in reader.close():
        yield payload
