"""Prometheus metrics: calls by method and status, durations, streamed messages."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from prometheus_client import REGISTRY

from gemini_gateway.client.gateway_client import text_request

GENERATE = "/google.ai.generativelanguage.v1beta.GenerativeService/GenerateContent"
STREAM = "/google.ai.generativelanguage.v1beta.GenerativeService/StreamGenerateContent"


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _settled(name: str, expected: float, **labels: str) -> float:
    """The metric once the server has finished the call.

    context.abort() sends the status before the handler unwinds, so a failed call can
    reach the client a moment before the server records it.
    """
    for _ in range(300):
        if _value(name, **labels) == expected:
            break
        await asyncio.sleep(0.01)
    return _value(name, **labels)


async def test_calls_are_counted_by_method_and_code(generative) -> None:
    # Calls cancelled by earlier tests may still be unwinding in the server: let them finish
    # before taking the baseline.
    assert await _settled("gateway_grpc_calls_in_flight", 0, method=GENERATE) == 0
    ok = _value("gateway_grpc_calls_total", method=GENERATE, code="OK")
    exhausted = _value("gateway_grpc_calls_total", method=GENERATE, code="RESOURCE_EXHAUSTED")
    timed = _value("gateway_grpc_call_duration_seconds_count", method=GENERATE)

    await generative.GenerateContent(text_request("gemini-2.5-flash", "count me"))
    with pytest.raises(grpc.aio.AioRpcError):
        await generative.GenerateContent(text_request("gemini-2.5-flash", "[[fault:429]]"))

    calls = "gateway_grpc_calls_total"
    assert await _settled(calls, ok + 1, method=GENERATE, code="OK") == ok + 1
    assert (
        await _settled(calls, exhausted + 1, method=GENERATE, code="RESOURCE_EXHAUSTED")
        == exhausted + 1
    )
    timed_now = await _settled(
        "gateway_grpc_call_duration_seconds_count", timed + 2, method=GENERATE
    )
    assert timed_now == timed + 2
    assert await _settled("gateway_grpc_calls_in_flight", 0, method=GENERATE) == 0


async def test_streamed_messages_and_mid_stream_errors(generative) -> None:
    assert await _settled("gateway_grpc_calls_in_flight", 0, method=STREAM) == 0
    sent = _value("gateway_grpc_streamed_messages_total", method=STREAM)
    failed = _value("gateway_grpc_calls_total", method=STREAM, code="INTERNAL")
    chunks = [
        c async for c in generative.StreamGenerateContent(text_request("gemini-2.5-flash", "hi"))
    ]
    assert _value("gateway_grpc_streamed_messages_total", method=STREAM) == sent + len(chunks)
    sent += len(chunks)
    call = generative.StreamGenerateContent(
        text_request("gemini-2.5-flash", "[[chunks:4]] [[fault:stream_error]]")
    )
    with pytest.raises(grpc.aio.AioRpcError):
        async for _ in call:
            pass
    assert _value("gateway_grpc_streamed_messages_total", method=STREAM) > sent
    failed_now = await _settled(
        "gateway_grpc_calls_total", failed + 1, method=STREAM, code="INTERNAL"
    )
    assert failed_now == failed + 1
