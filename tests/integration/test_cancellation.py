"""Deadlines bound the upstream request; a cancelled call closes it at once."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from gemini_gateway.client.gateway_client import text_request
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import generative_service_pb2_grpc
from gemini_gateway.server.app import start_gateway
from gemini_gateway.server.config import Settings
from tests.integration.conftest import emulator_stats

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _wait_for_cancelled(http, emulator, before: int, within: float = 2.0) -> float:
    """Seconds until the emulator saw one more cancelled (client-closed) request."""
    start = time.perf_counter()
    while time.perf_counter() - start < within:
        stats = await emulator_stats(http, emulator)
        if stats["cancelled"] > before:
            return time.perf_counter() - start
        await asyncio.sleep(0.02)
    raise AssertionError(f"upstream request still open after {within}s: {stats}")


async def test_client_cancel_closes_upstream_stream(generative, emulator, http) -> None:
    before = (await emulator_stats(http, emulator))["cancelled"]
    call = generative.StreamGenerateContent(
        text_request("gemini-2.5-flash", "long [[chunks:50]] [[chunk_delay_ms:200]]")
    )
    first = await call.read()
    assert first.candidates
    call.cancel()
    assert await _wait_for_cancelled(http, emulator, before) < 1.0
    assert (await emulator_stats(http, emulator))["open"] == 0


async def test_deadline_bounds_unary_upstream_request(generative, emulator, http) -> None:
    before = (await emulator_stats(http, emulator))["cancelled"]
    request = text_request("gemini-2.5-flash", "[[fault:headers_delay:5000]]")
    start = time.perf_counter()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await generative.GenerateContent(request, timeout=0.5)
    elapsed = time.perf_counter() - start
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 1.5
    # The upstream request was closed, not left running for its 5 s.
    assert await _wait_for_cancelled(http, emulator, before) < 1.0


async def test_deadline_bounds_stream(generative, emulator, http) -> None:
    before = (await emulator_stats(http, emulator))["cancelled"]
    call = generative.StreamGenerateContent(
        text_request("gemini-2.5-flash", "[[chunks:20]] [[chunk_delay_ms:100]]"), timeout=0.6
    )
    received = 0
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            received += 1
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert 2 <= received < 20
    # The upstream stream was closed at the deadline, not read to its end.
    assert await _wait_for_cancelled(http, emulator, before) < 1.0
    assert (await emulator_stats(http, emulator))["open"] == 0


async def test_deadline_reaches_upstream_as_timeout(generative, emulator, http) -> None:
    # A deadline shorter than the upstream's delay ends the call and closes the upstream
    # request; a longer one lets the same request succeed upstream.
    request = text_request("gemini-2.5-flash", "[[fault:headers_delay:500]]")

    before = await emulator_stats(http, emulator)
    start = time.perf_counter()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await generative.GenerateContent(request, timeout=0.1)
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.perf_counter() - start < 0.4  # at the deadline, not at the upstream's answer
    # Closed by the gateway (counted as cancelled), not left to answer after its 500 ms.
    assert await _wait_for_cancelled(http, emulator, before["cancelled"]) < 1.0
    after = await emulator_stats(http, emulator)
    assert after["completed"] == before["completed"]
    assert after["open"] == 0

    response = await generative.GenerateContent(request, timeout=3)
    assert response.candidates
    done = await emulator_stats(http, emulator)
    assert done["completed"] == after["completed"] + 1
    assert done["cancelled"] == after["cancelled"]


async def test_upstream_time_limit_without_a_deadline(emulator) -> None:
    # No gRPC deadline: the gateway's own upstream_timeout_s bounds the upstream request.
    gw = await start_gateway(
        Settings(
            upstream="emulator",
            upstream_url=emulator.url,
            port=0,
            upstream_timeout_s=0.3,
            upstream_stream_timeout_s=0.3,
        )
    )
    try:
        async with grpc.aio.insecure_channel(gw.target) as channel:
            stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
            slow_headers = text_request("gemini-2.5-flash", "[[fault:headers_delay:3000]]")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.GenerateContent(slow_headers)
            assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            assert "upstream did not answer within 0.3s" in info.value.details()

            slow_chunks = text_request("gemini-2.5-flash", "[[chunks:5]] [[chunk_delay_ms:200]]")
            received = 0
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in stub.StreamGenerateContent(slow_chunks):
                    received += 1
            assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            assert 1 <= received < 5
    finally:
        await gw.stop(0)
