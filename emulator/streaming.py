"""The two wire forms of streamGenerateContent, and the faults that strike mid-stream.

SSE (`?alt=sse`): every event is `data: <one-line JSON>\\r\\n\\r\\n`; no comments, no [DONE].
Without alt: one JSON array written element by element, `[{...}\\r\\n,\\r\\n{...}\\r\\n]`.
Every event is written (and so flushed to the socket) as soon as it is produced.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from gemini_gateway.emulator.errors import fault_error
from gemini_gateway.emulator.faults import FaultPlan
from gemini_gateway.emulator.injection import drop_connection
from gemini_gateway.emulator.wire import CHARSET, JSON_CONTENT_TYPE, compact, pretty


class StreamWriter:
    """Writes one streamed response; subclasses define the framing."""

    content_type = JSON_CONTENT_TYPE

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response = web.StreamResponse(status=200)
        self.response.content_type = self.content_type
        self.written = 0

    async def start(self) -> None:
        await self.response.prepare(self.request)

    async def write(self, text: str) -> None:
        await self.response.write(text.encode())

    async def event(self, payload: dict[str, Any]) -> None:
        raise NotImplementedError

    async def error(self, payload: dict[str, Any], raw: bool) -> None:
        raise NotImplementedError

    async def malformed(self) -> None:
        raise NotImplementedError

    async def finish(self) -> None:
        await self.response.write_eof()


class SseWriter(StreamWriter):
    content_type = "text/event-stream"

    async def event(self, payload: dict[str, Any]) -> None:
        await self.write(f"data: {compact(payload)}\r\n\r\n")
        self.written += 1

    async def error(self, payload: dict[str, Any], raw: bool) -> None:
        # Google sometimes sends a mid-stream error as bare pretty-printed JSON.
        await self.write(pretty(payload) + "\n" if raw else f"data: {compact(payload)}\r\n\r\n")

    async def malformed(self) -> None:
        await self.write("data: {not json\r\n\r\n")


class JsonArrayWriter(StreamWriter):
    def __init__(self, request: web.Request) -> None:
        super().__init__(request)
        self.response.charset = CHARSET

    async def _element(self, text: str) -> None:
        await self.write(("[" if self.written == 0 else "\r\n,\r\n") + text)
        self.written += 1

    async def event(self, payload: dict[str, Any]) -> None:
        await self._element(pretty(payload))

    async def error(self, payload: dict[str, Any], raw: bool) -> None:
        await self._element(pretty(payload))

    async def malformed(self) -> None:
        await self._element("{not json")

    async def finish(self) -> None:
        await self.write("\r\n]" if self.written else "[]")
        await super().finish()


async def stream_chunks(
    request: web.Request,
    chunks: list[dict[str, Any]],
    plan: FaultPlan,
    delay_ms: float,
    model: str,
) -> web.StreamResponse:
    """Send `chunks` with `delay_ms` between them, applying mid-stream faults after the first."""
    writer: StreamWriter = (
        SseWriter(request) if request.query.get("alt") == "sse" else JsonArrayWriter(request)
    )
    await writer.start()
    midstream = plan.disconnect or plan.malformed or plan.stream_error is not None
    for index, chunk in enumerate(chunks):
        if index:
            await asyncio.sleep(delay_ms / 1000)
        await writer.event(chunk)
        if midstream:
            break
    if midstream:
        await asyncio.sleep(delay_ms / 1000)
        if plan.disconnect:
            await drop_connection(request)
        if plan.malformed:
            await writer.malformed()
        elif plan.stream_error is not None:
            body = fault_error(plan.stream_error_code, model).body()
            await writer.error(body, raw=plan.stream_error == "raw")
    await writer.finish()
    return writer.response
