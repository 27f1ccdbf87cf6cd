"""Applying a FaultPlan to an HTTP exchange, up to the point where headers are sent.

Generate handlers combine the header, prompt and settings plans themselves (they need the
prompt) and handle the mid-stream faults in streaming.py. Every other route of the Google
surface gets the header's faults through `fault_middleware`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

from aiohttp import web

from gemini_gateway.emulator.errors import bad_request, fault_error, proxy_error_page
from gemini_gateway.emulator.faults import (
    FAULT_HEADER,
    FaultPlan,
    FaultSyntaxError,
    parse_fault_list,
)
from gemini_gateway.emulator.recorder import TEST_PREFIX, mark_aborted
from gemini_gateway.emulator.settings import SETTINGS_KEY
from gemini_gateway.emulator.wire import JSON_CONTENT_TYPE

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[web.StreamResponse]])

# How long a handler waits for the cancellation that follows dropping its connection
# (immediate under handler_cancellation; without it aiohttp discards the reply instead).
_DROP_GRACE_SECONDS = 1.0

MALFORMED_BODY = '{\n  "candidates": [\n    {\n      "content": {\n        "parts": [\n'


def handles_own_faults(handler: Handler) -> Handler:
    """Mark a route handler that applies fault plans itself."""
    handler.handles_own_faults = True  # type: ignore[attr-defined]
    return handler


def checked_plan(text: str | None, source: str) -> FaultPlan:
    """Parse a fault list from a request; a bad word is the client's error (400)."""
    try:
        return parse_fault_list(text)
    except FaultSyntaxError as exc:
        raise bad_request(f"Invalid {source}: {exc}") from None


def header_plan(request: web.Request) -> FaultPlan:
    return checked_plan(request.headers.get(FAULT_HEADER), f"{FAULT_HEADER} header")


def settings_plan(request: web.Request) -> FaultPlan:
    return parse_fault_list(request.app[SETTINGS_KEY].fault)


async def drop_connection(request: web.Request) -> NoReturn:
    """Close the TCP connection without finishing the response (the `disconnect` fault)."""
    mark_aborted()
    if request.transport is not None:
        request.transport.close()
    await asyncio.sleep(_DROP_GRACE_SECONDS)
    raise ConnectionResetError("connection dropped by the disconnect fault")


async def before_headers(
    request: web.Request, plan: FaultPlan, model: str, streaming: bool
) -> web.StreamResponse | None:
    """Apply the faults that act before any response header; a response replaces the answer.

    For a unary call this covers every fault: stream errors become a plain error reply.
    """
    if plan.headers_delay_ms:
        await asyncio.sleep(plan.headers_delay_ms / 1000)
    if plan.html:
        return proxy_error_page()
    if plan.error_code is not None:
        raise fault_error(plan.error_code, model)
    if streaming:
        return None
    if plan.disconnect:
        await drop_connection(request)
    if plan.malformed:
        return web.Response(text=MALFORMED_BODY, content_type=JSON_CONTENT_TYPE, charset="UTF-8")
    if plan.stream_error is not None:
        raise fault_error(plan.stream_error_code, model)
    return None


@web.middleware
async def fault_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Settings' headers delay for every API call; header faults for non-generate routes."""
    if request.path.startswith(TEST_PREFIX):
        return await handler(request)
    delay = request.app[SETTINGS_KEY].headers_delay_ms
    if delay:
        await asyncio.sleep(delay / 1000)
    if not getattr(request.match_info.handler, "handles_own_faults", False):
        model = request.match_info.get("model", "gemini")
        replacement = await before_headers(request, header_plan(request), model, False)
        if replacement is not None:
            return replacement
    return await handler(request)
