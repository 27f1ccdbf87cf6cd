"""Every error path: upstream errors, broken bodies, mid-stream errors, unreachable upstream."""

from __future__ import annotations

import json
import socket

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gemini_gateway.client.gateway_client import response_text, text_request
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import generative_service_pb2_grpc
from gemini_gateway.server.app import start_gateway
from gemini_gateway.server.config import Settings

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _error(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


def _details(exc: grpc.aio.AioRpcError) -> dict[str, object]:
    """Unpack grpc-status-details-bin the way grpcio-status users do."""
    status = rpc_status.from_call(exc)
    assert status is not None, "no grpc-status-details-bin trailer"
    assert status.code == exc.code().value[0]
    unpacked = {}
    for detail in status.details:
        for cls in (
            error_details_pb2.RetryInfo,
            error_details_pb2.QuotaFailure,
            error_details_pb2.Help,
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
        ):
            if detail.Is(cls.DESCRIPTOR):
                message = cls()
                detail.Unpack(message)
                unpacked[cls.DESCRIPTOR.name] = message
    return unpacked


async def test_429_becomes_resource_exhausted_with_retry_info(generative) -> None:
    exc = await _error(
        generative.GenerateContent(text_request("gemini-2.5-flash", "[[fault:429]]"))
    )
    assert exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    details = _details(exc)
    assert details["RetryInfo"].retry_delay.seconds == 7
    assert details["QuotaFailure"].violations
    assert details["Help"].links


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ("500", grpc.StatusCode.INTERNAL),
        ("503", grpc.StatusCode.UNAVAILABLE),
        ("400", grpc.StatusCode.INVALID_ARGUMENT),
        ("403", grpc.StatusCode.PERMISSION_DENIED),
        ("404", grpc.StatusCode.NOT_FOUND),
    ],
)
async def test_http_errors_map_by_status_name(generative, fault: str, code) -> None:
    request = text_request("gemini-2.5-flash", f"[[fault:{fault}]]")
    exc = await _error(generative.GenerateContent(request))
    assert exc.code() is code
    assert exc.details()


async def test_unknown_model_is_not_found(generative) -> None:
    exc = await _error(generative.GenerateContent(text_request("models/no-such-model", "hi")))
    assert exc.code() is grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in exc.details()


async def test_empty_contents_keeps_google_bad_request_details(generative) -> None:
    from gemini_gateway.generated.google.ai.generativelanguage.v1beta import generative_service_pb2

    exc = await _error(
        generative.GenerateContent(
            generative_service_pb2.GenerateContentRequest(model="models/gemini-2.5-flash")
        )
    )
    assert exc.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _details(exc)["BadRequest"].field_violations


async def test_malformed_json_body_is_internal_naming_upstream_status(generative) -> None:
    request = text_request("gemini-2.5-flash", "[[fault:malformed]]")
    exc = await _error(generative.GenerateContent(request))
    assert exc.code() is grpc.StatusCode.INTERNAL
    assert "HTTP 200" in exc.details()
    assert "not valid JSON" in exc.details()


async def test_html_proxy_page_is_unavailable_naming_upstream_status(generative) -> None:
    exc = await _error(
        generative.GenerateContent(text_request("gemini-2.5-flash", "[[fault:html]]"))
    )
    assert exc.code() is grpc.StatusCode.UNAVAILABLE
    assert "HTTP 502" in exc.details()


async def _stream_error_status(http, emulator, prompt: str) -> str:
    """The google.rpc.Code name inside the emulator's own mid-stream error object."""
    url = f"{emulator.url}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    body = {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}
    async with http.post(url, json=body) as response:
        assert response.status == 200
        text = await response.text()
    start = text.index('"error"')
    error = json.loads("{" + text[start:].removeprefix("data: ").strip().rstrip())
    return error["error"]["status"]


@pytest.mark.parametrize("fault", ["stream_error", "stream_error_raw"])
async def test_mid_stream_error_ends_stream_after_sent_chunks(
    generative, emulator, http, fault: str
) -> None:
    prompt = f"[[chunks:4]] [[fault:{fault}]]"
    expected = await _stream_error_status(http, emulator, prompt)
    call = generative.StreamGenerateContent(text_request("gemini-2.5-flash", prompt))
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for chunk in call:
            received.append(response_text(chunk))
    assert received, "chunks sent before the error must reach the client"
    assert received[0].startswith("Echo:")
    assert info.value.code().name == expected


async def test_stream_malformed_event_is_internal(generative) -> None:
    call = generative.StreamGenerateContent(
        text_request("gemini-2.5-flash", "[[chunks:3]] [[fault:malformed]]")
    )
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for chunk in call:
            received.append(chunk)
    assert len(received) >= 1
    assert info.value.code() is grpc.StatusCode.INTERNAL


async def test_upstream_disconnect_mid_stream_is_unavailable(generative) -> None:
    call = generative.StreamGenerateContent(
        text_request("gemini-2.5-flash", "[[chunks:4]] [[fault:disconnect]]")
    )
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for chunk in call:
            received.append(chunk)
    assert len(received) == 1
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "closed" in info.value.details()


async def test_upstream_error_before_stream_starts(generative) -> None:
    call = generative.StreamGenerateContent(text_request("gemini-2.5-flash", "[[fault:429]]"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            pass
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _details(info.value)["RetryInfo"].retry_delay.seconds == 7


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_unreachable_upstream_is_unavailable() -> None:
    gw = await start_gateway(
        Settings(upstream="gemini", upstream_url=f"http://127.0.0.1:{_closed_port()}", port=0)
    )
    try:
        async with grpc.aio.insecure_channel(gw.target) as channel:
            stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
            exc = await _error(stub.GenerateContent(text_request("gemini-2.5-flash", "hi")))
            assert exc.code() is grpc.StatusCode.UNAVAILABLE
            assert "cannot reach upstream 127.0.0.1" in exc.details()
            call = stub.StreamGenerateContent(text_request("gemini-2.5-flash", "hi"))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in call:
                    pass
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        await gw.stop(0)
