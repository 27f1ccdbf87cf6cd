"""A malicious or broken upstream: oversize bodies and events, bad bytes, deep nesting, cuts.

A small real aiohttp server plays the upstream; the model name of each call picks what it
does. Every case goes through a real gateway (once per HTTP client) and asserts the exact
status the written rule of errors.py gives, and that no message names a Python class.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from aiohttp import web

from gemini_gateway.client.gateway_client import text_request
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2_grpc,
)
from gemini_gateway.server.app import build_route_table, start_gateway
from gemini_gateway.server.config import Settings
from gemini_gateway.server.errors import UpstreamError
from gemini_gateway.server.transports import BodyLimits, make_transport
from gemini_gateway.server.upstream import GeminiFlavour, UpstreamClient

pytestmark = pytest.mark.asyncio(loop_scope="session")

MIB = 1024 * 1024
S = grpc.StatusCode
GOOD_EVENT = b'data: {"candidates": [{"content": {"parts": [{"text": "ok"}]}}]}\r\n\r\n'
# Far more than any limit; a gateway that read it all would show in `written`.
ENDLESS_BYTES = 256 * MIB
DEEP = 100_000
CLASS_NAME = re.compile(r"\b[A-Z][A-Za-z]*(?:Error|Exception)\b")

Stub = generative_service_pb2_grpc.GenerativeServiceStub


def _details(error: grpc.aio.AioRpcError) -> str:
    return error.details() or ""


class MaliciousUpstream:
    """Answers `/v1beta/models/<case>:<method>` as the case says; counts bytes written."""

    def __init__(self) -> None:
        self.written: dict[str, int] = {}
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # A hung-up gateway cancels the handler; nothing is waited for at cleanup.
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        case = request.path.rpartition("/")[2].partition(":")[0]
        if case == "declared-huge":
            response = web.StreamResponse(headers={"content-length": str(ENDLESS_BYTES)})
            response.content_type = "application/json"
            await response.prepare(request)
            await response.write(b'{"candidates": [')
            await asyncio.sleep(3600)  # ended by the gateway dropping the connection
            return response
        if case == "silent":
            await asyncio.sleep(3600)
        body = CASES[case]
        if isinstance(body, bytes):
            return web.Response(body=body, content_type="application/json")
        response = web.StreamResponse()
        response.content_type = (
            "text/event-stream" if case.startswith("sse") else "application/json"
        )
        await response.prepare(request)
        try:
            await body(self, case, request, response)
        except ConnectionError:
            pass  # the gateway hung up: what it should do past a limit
        return response

    async def write(self, case: str, response: web.StreamResponse, data: bytes) -> None:
        await response.write(data)
        self.written[case] = self.written.get(case, 0) + len(data)


async def _endless(
    upstream: MaliciousUpstream, case: str, request: web.Request, response: web.StreamResponse
) -> None:
    await upstream.write(case, response, b"data: " if case.startswith("sse") else b"[")
    piece = b"x" * 65536 if case.startswith("sse") else b"0," * 32768
    while upstream.written[case] < ENDLESS_BYTES:
        await upstream.write(case, response, piece)


async def _truncated(
    upstream: MaliciousUpstream, case: str, request: web.Request, response: web.StreamResponse
) -> None:
    await upstream.write(case, response, GOOD_EVENT + b'data: {"candidates": [{"content": ')
    await response.write_eof()  # a clean end of the body, inside the event


async def _cut_utf8(
    upstream: MaliciousUpstream, case: str, request: web.Request, response: web.StreamResponse
) -> None:
    await upstream.write(case, response, GOOD_EVENT + b'data: {"text": "' + "é".encode()[:1])
    await response.write_eof()


async def _broken(
    upstream: MaliciousUpstream, case: str, request: web.Request, response: web.StreamResponse
) -> None:
    await upstream.write(case, response, GOOD_EVENT + b'data: {"candidates": [')
    assert request.transport is not None
    request.transport.close()  # the connection drops inside the chunked body
    await asyncio.sleep(3600)


def _deep(depth: int) -> bytes:
    return b'{"candidates": ' + b"[" * depth + b"]" * depth + b"}"


CASES: dict[str, bytes | Callable[..., Awaitable[None]]] = {
    "endless-body": _endless,
    "bad-utf8": b'{"candidates": [{"content": {"parts": [{"text": "\xff\xfe"}]}}]}',
    "deep": _deep(DEEP),
    "sse-endless-event": _endless,
    "sse-truncated": _truncated,
    "sse-cut-utf8": _cut_utf8,
    "sse-broken": _broken,
}


async def _sse_body(event: bytes) -> Callable[..., Awaitable[None]]:
    async def write(
        upstream: MaliciousUpstream,
        case: str,
        request: web.Request,
        response: web.StreamResponse,
    ) -> None:
        await upstream.write(case, response, GOOD_EVENT + event)
        await response.write_eof()

    return write


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[MaliciousUpstream]:
    CASES["sse-bad-utf8"] = await _sse_body(b'data: {"text": "\xff\xfe"}\r\n\r\n')
    CASES["sse-deep"] = await _sse_body(b"data: " + _deep(DEEP) + b"\r\n\r\n")
    server = MaliciousUpstream()
    await server.start()
    yield server
    await server.close()


@pytest.fixture(scope="module", params=["aiohttp", "httpx"])
async def stub(
    request: pytest.FixtureRequest, upstream: MaliciousUpstream
) -> AsyncIterator[generative_service_pb2_grpc.GenerativeServiceStub]:
    gateway = await start_gateway(
        Settings(
            upstream="gemini",
            upstream_url=upstream.url,
            api_key="hardening-key",
            port=0,
            http_client=request.param,
            max_upstream_body_mb=1,
            max_sse_event_mb=1,
            record_usage=False,
        )
    )
    try:
        async with grpc.aio.insecure_channel(gateway.target) as channel:
            yield generative_service_pb2_grpc.GenerativeServiceStub(channel)
    finally:
        await gateway.stop(0)


async def _unary_error(stub: Any, case: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GenerateContent(text_request(case, "hi"), timeout=60)
    assert not CLASS_NAME.search(info.value.details() or ""), info.value.details()
    return info.value


async def _stream_error(stub: Any, case: str) -> tuple[grpc.aio.AioRpcError, int]:
    received = 0
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stub.StreamGenerateContent(text_request(case, "hi"), timeout=60):
            received += 1
    assert not CLASS_NAME.search(info.value.details() or ""), info.value.details()
    return info.value, received


async def test_unary_body_over_the_limit_is_refused_without_reading_it(
    stub: Stub, upstream: MaliciousUpstream
) -> None:
    upstream.written.pop("endless-body", None)
    error = await _unary_error(stub, "endless-body")
    assert error.code() is S.RESOURCE_EXHAUSTED
    assert _details(error) == (
        "upstream answer is larger than the 1 MiB limit (setting max_upstream_body_mb)"
    )
    # The gateway hung up near the limit: far less than the endless body was ever sent.
    assert upstream.written["endless-body"] < ENDLESS_BYTES // 4


async def test_declared_oversize_body_is_refused_from_its_headers(stub: Stub) -> None:
    error = await _unary_error(stub, "declared-huge")
    assert error.code() is S.RESOURCE_EXHAUSTED
    assert "1 MiB limit (setting max_upstream_body_mb)" in _details(error)


async def test_unary_body_not_utf8_is_internal(stub: Stub) -> None:
    error = await _unary_error(stub, "bad-utf8")
    assert error.code() is S.INTERNAL
    assert _details(error).startswith("upstream")


async def test_unary_body_nested_too_deeply_is_internal(stub: Stub) -> None:
    error = await _unary_error(stub, "deep")
    assert error.code() is S.INTERNAL
    assert "nested too deeply" in _details(error)


async def test_stream_event_over_the_limit_is_resource_exhausted(
    stub: Stub, upstream: MaliciousUpstream
) -> None:
    upstream.written.pop("sse-endless-event", None)
    error, received = await _stream_error(stub, "sse-endless-event")
    assert received == 0
    assert error.code() is S.RESOURCE_EXHAUSTED
    assert re.fullmatch(
        r"upstream sent a stream event larger than the [\d.]+ MiB limit "
        r"\(setting max_sse_event_mb\)",
        _details(error),
    )
    assert upstream.written["sse-endless-event"] < ENDLESS_BYTES // 4


async def test_stream_event_not_utf8_is_internal_not_the_callers_fault(stub: Stub) -> None:
    error, received = await _stream_error(stub, "sse-bad-utf8")
    assert received == 1
    assert error.code() is S.INTERNAL
    assert _details(error).startswith("upstream sent a stream event that is not valid UTF-8")


async def test_stream_event_nested_too_deeply_is_internal(stub: Stub) -> None:
    error, received = await _stream_error(stub, "sse-deep")
    assert received == 1
    assert error.code() is S.INTERNAL
    assert "nested too deeply" in _details(error)


@pytest.mark.parametrize("case", ["sse-truncated", "sse-cut-utf8"])
async def test_stream_ending_inside_an_event_is_unavailable(stub: Stub, case: str) -> None:
    error, received = await _stream_error(stub, case)
    assert received == 1
    assert error.code() is S.UNAVAILABLE
    assert _details(error).startswith("upstream stream ended inside an event")


async def test_connection_dropped_mid_stream_is_unavailable_in_words(stub: Stub) -> None:
    error, received = await _stream_error(stub, "sse-broken")
    assert received == 1
    assert error.code() is S.UNAVAILABLE
    assert _details(error).startswith("upstream closed the response before it ended: ")


async def test_unreachable_upstream_message_has_no_class_name() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gateway = await start_gateway(
        Settings(upstream="gemini", upstream_url=f"http://127.0.0.1:{port}", port=0)
    )
    try:
        async with grpc.aio.insecure_channel(gateway.target) as channel:
            stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
            error = await _unary_error(stub, "gemini-2.5-flash")
            assert error.code() is S.UNAVAILABLE
            assert _details(error).startswith(f"cannot reach upstream 127.0.0.1:{port}: ")
    finally:
        await gateway.stop(0)


# The UpstreamClient itself: the limits and default time limits it applies.

ROUTES = build_route_table()
GENERATE = ROUTES["/google.ai.generativelanguage.v1beta.GenerativeService/GenerateContent"]
STREAM = ROUTES["/google.ai.generativelanguage.v1beta.GenerativeService/StreamGenerateContent"]


@pytest.mark.parametrize("http_client", ["aiohttp", "httpx"])
async def test_client_applies_its_event_limit_and_default_time_limits(
    upstream: MaliciousUpstream, http_client: str
) -> None:
    settings = Settings(http_client=http_client, max_sse_event_mb=0.5)
    client = UpstreamClient(
        GeminiFlavour(upstream.url, "hardening-key", pass_through=False),
        make_transport(settings),
        default_timeout_s=0.25,
        stream_timeout_s=0.5,
    )
    try:
        assert client.limits == BodyLimits(max_body_bytes=32 * MIB, max_sse_event_bytes=MIB // 2)
        call = STREAM.to_http(text_request("sse-endless-event", "hi"))
        with pytest.raises(UpstreamError) as info:
            async with client.stream_events(call, (), None) as events:
                async for _ in events:
                    pass
        assert info.value.code is S.RESOURCE_EXHAUSTED
        assert "0.5 MiB limit (setting max_sse_event_mb)" in info.value.message

        # No deadline: unary calls get default_timeout_s, streams stream_timeout_s.
        with pytest.raises(UpstreamError) as info:
            await client.call(GENERATE.to_http(text_request("silent", "hi")), (), None)
        assert (info.value.code, info.value.message) == (
            S.DEADLINE_EXCEEDED,
            "upstream did not answer within 0.25s",
        )
        with pytest.raises(UpstreamError) as info:
            async with client.stream(STREAM.to_http(text_request("silent", "hi")), (), None):
                pass
        assert (info.value.code, info.value.message) == (
            S.DEADLINE_EXCEEDED,
            "upstream did not answer within 0.5s",
        )
    finally:
        await client.aclose()
