"""Applying a FaultPlan to an HTTP exchange, up to the point where headers are sent.

Generate handlers combine the header, prompt and settings plans themselves (they need the
prompt) and handle the mid-stream faults in streaming.py. Every other route of the Google
surface gets the header's faults through `fault_middleware`.

The leaky-upstream faults live here whole: `echo` puts the request's URL and headers (its
API key or bearer token among them) into every error body the request gets: the JSON
error's message and each kind of google.rpc detail, the HTML page, the plain-text error,
and on a stream the mid-stream error, malformed or cut-off event, written here after one
ordinary chunk. `plain[:<code>]` answers a text/plain error, `error_200[:<code>]` a Google
error object in an HTTP 200 body (a stream: as its first event), `truncated` a stream
whose last event is cut off before its blank line, the body then ending cleanly.
"""

from __future__ import annotations

import asyncio
import html
import json
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote

from aiohttp import web

from gemini_gateway.emulator.errors import (
    PROXY_ERROR_HTML,
    ApiError,
    bad_request,
    detail,
    fault_error,
    proxy_error_page,
)
from gemini_gateway.emulator.faults import (
    FAULT_HEADER,
    FaultPlan,
    FaultSyntaxError,
    parse_fault_list,
)
from gemini_gateway.emulator.recorder import TEST_PREFIX, mark_aborted
from gemini_gateway.emulator.settings import SETTINGS_KEY
from gemini_gateway.emulator.wire import JSON_CONTENT_TYPE, json_response

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
    echo = echo_text(request) if plan.echo else None
    if plan.headers_delay_ms:
        await asyncio.sleep(plan.headers_delay_ms / 1000)
    if plan.html:
        return proxy_error_page() if echo is None else _echo_page(echo)
    if plan.plain_error_code is not None:
        return _plain_error(plan.plain_error_code, echo)
    if plan.error_code is not None:
        raise _error(plan.error_code, model, request, echo)
    if streaming:
        leaky = echo is not None and (plan.malformed or plan.stream_error is not None)
        if plan.truncated or plan.error_200_code is not None or leaky:
            return await _faulty_stream(request, plan, model, echo)
        return None
    if plan.disconnect:
        await drop_connection(request)
    if plan.malformed or plan.truncated:
        text = MALFORMED_BODY if echo is None else echo + MALFORMED_BODY
        return web.Response(text=text, content_type=JSON_CONTENT_TYPE, charset="UTF-8")
    if plan.error_200_code is not None:
        error = _error(plan.error_200_code, model, request, echo)
        return json_response(error.body(), status=200)
    if plan.stream_error is not None:
        raise _error(plan.stream_error_code, model, request, echo)
    return None


# Quoted first, so that even a short snippet of an echoing body holds them.
_CREDENTIAL_HEADERS = ("x-goog-api-key", "authorization")


def echo_text(request: web.Request) -> str:
    """The request line and headers (credentials first), as a leaky server quotes them."""
    headers = sorted(
        request.headers.items(), key=lambda item: item[0].lower() not in _CREDENTIAL_HEADERS
    )
    lines = [f"{request.method} {request.url}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return "\n".join(lines)


def _credential(request: web.Request) -> str:
    key = request.headers.get("x-goog-api-key") or request.query.get("key")
    if key:
        return key
    return request.headers.get("authorization", "").partition(" ")[2]


def _echo_details(request: web.Request, echo: str) -> list[dict[str, Any]]:
    """One of each google.rpc detail kind, every text field quoting the request."""
    credential = _credential(request)
    headers = [(name, value) for name, value in request.headers.items()]
    return [
        detail(
            "BadRequest",
            fieldViolations=[
                {"field": name, "description": f"{name}: {value}"} for name, value in headers
            ],
        ),
        detail(
            "ErrorInfo",
            reason="REQUEST_ECHO",
            domain="emulator.invalid",
            metadata={**dict(headers), "url": str(request.url)},
        ),
        detail(
            "Help",
            links=[
                {"description": echo, "url": str(request.url.update_query(key=credential))},
                {
                    "description": "encoded",
                    "url": "https://example.invalid/?key=" + quote(credential, safe=""),
                },
            ],
        ),
        detail("LocalizedMessage", locale="en-US", message=echo),
        detail("DebugInfo", stackEntries=echo.splitlines(), detail=echo),
        detail("RequestInfo", requestId=credential, servingData=echo),
        detail(
            "ResourceInfo",
            resourceType="credential",
            resourceName=credential,
            owner=credential,
            description=echo,
        ),
        detail(
            "QuotaFailure",
            violations=[{"subject": credential, "description": echo, "quotaId": credential}],
        ),
        detail(
            "PreconditionFailure",
            violations=[{"type": "ECHO", "subject": credential, "description": echo}],
        ),
        # A type no client knows, named after the credential.
        {"@type": "type.googleapis.com/echo." + quote(credential, safe=""), "echo": echo},
    ]


def _error(code: int, model: str, request: web.Request, echo: str | None) -> ApiError:
    """The error of a numeric fault; with echo, its message and details quote the request."""
    error = fault_error(code, model)
    if echo is None:
        return error
    return ApiError(
        error.status,
        f"{error.message} Request was: {echo}",
        [*error.details, *_echo_details(request, echo)],
        http_status=error.http_status,
    )


def _echo_page(echo: str) -> web.Response:
    """The proxy's HTML page, quoting the request at the top and in the page."""
    head, _, tail = PROXY_ERROR_HTML.partition("</html>")
    page = f"<!-- {echo} -->\n{head}<pre>{html.escape(echo)}</pre>\n</html>{tail}"
    return web.Response(status=502, text=page, content_type="text/html")


def _plain_error(code: int, echo: str | None) -> web.Response:
    text = f"Error {code}" if echo is None else f"Error {code}: {echo}"
    return web.Response(status=code, text=text + "\n", content_type="text/plain")


def _first_chunk(model: str) -> dict[str, Any]:
    content = {"parts": [{"text": "Echo: "}], "role": "model"}
    return {"candidates": [{"content": content, "index": 0}], "modelVersion": model}


async def _faulty_stream(
    request: web.Request, plan: FaultPlan, model: str, echo: str | None
) -> web.StreamResponse:
    """An HTTP 200 stream that goes wrong after one ordinary chunk (or at once: error_200)."""
    # streaming.py imports this module; its writers are only needed here.
    from gemini_gateway.emulator.streaming import JsonArrayWriter, SseWriter, StreamWriter

    sse = request.query.get("alt") == "sse"
    writer: StreamWriter = SseWriter(request) if sse else JsonArrayWriter(request)
    await writer.start()
    if plan.error_200_code is None:
        await writer.event(_first_chunk(model))
    quoted = json.dumps(echo or "")[1:-1]
    if plan.truncated:
        cut = '{"candidates": [{"content": {"parts": [{"text": "' + quoted
        await writer.write(("data: " if sse else "\r\n,\r\n") + cut)
        await writer.response.write_eof()  # a clean end of the body, inside the event
        return writer.response
    if plan.malformed:
        await writer.write(f"data: {{not json {quoted}\r\n\r\n" if sse else "\r\n,\r\n{not json")
        writer.written += 1
    else:
        code = plan.error_200_code or plan.stream_error_code
        body = _error(code, model, request, echo).body()
        await writer.error(body, raw=plan.stream_error == "raw")
    await writer.finish()
    return writer.response


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
