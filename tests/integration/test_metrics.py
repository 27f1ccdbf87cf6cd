"""Prometheus metrics: calls by method and status (as the client saw it), durations,
streamed messages, and the upstream's own latency."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from gemini_gateway.client.gateway_client import text_request
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2_grpc,
)
from gemini_gateway.server.app import Gateway, start_gateway
from gemini_gateway.server.config import Settings

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


REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


async def test_client_streaming_calls_are_counted_too(channel) -> None:
    """Server reflection (what grpcurl and buf curl call first) streams both ways."""
    assert await _settled("gateway_grpc_calls_in_flight", 0, method=REFLECTION) == 0
    ok = _value("gateway_grpc_calls_total", method=REFLECTION, code="OK")
    sent = _value("gateway_grpc_streamed_messages_total", method=REFLECTION)
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [reflection_pb2.ServerReflectionRequest(list_services="")] * 3
    responses = [r async for r in stub.ServerReflectionInfo(iter(requests))]
    assert len(responses) == 3
    assert await _settled("gateway_grpc_calls_total", ok + 1, method=REFLECTION, code="OK") == (
        ok + 1
    )
    assert _value("gateway_grpc_streamed_messages_total", method=REFLECTION) == sent + 3
    assert _value("gateway_grpc_calls_in_flight", method=REFLECTION) == 0


UPSTREAM = "gateway_upstream_request_seconds_count"


async def test_upstream_latency_is_its_own_histogram(generative, emulator) -> None:
    """One gRPC call, two upstream requests (a 503, then the answer): the call's duration is
    observed once, each upstream attempt once, under the upstream's HTTP status."""
    tag = uuid.uuid4().hex[:12]
    calls = _value("gateway_grpc_call_duration_seconds_count", method=GENERATE)
    answered = _value(UPSTREAM, method=GENERATE, code="200")
    unavailable = _value(UPSTREAM, method=GENERATE, code="503")
    prompt = f"[[fault:503,first:1:{tag}]] hi"
    await generative.GenerateContent(text_request("gemini-2.5-flash", prompt))
    assert _value(UPSTREAM, method=GENERATE, code="200") == answered + 1
    assert _value(UPSTREAM, method=GENERATE, code="503") == unavailable + 1
    duration = "gateway_grpc_call_duration_seconds_count"
    assert await _settled(duration, calls + 1, method=GENERATE) == calls + 1


@pytest.fixture(scope="module")
async def small_messages(emulator) -> AsyncIterator[Gateway]:
    """A gateway that sends messages of at most 1 MiB."""
    gateway = await start_gateway(
        Settings(upstream="emulator", upstream_url=emulator.url, port=0, max_message_mb=1)
    )
    yield gateway
    await gateway.stop(0)


# A prompt whose request fits in 1 MiB and whose echoed answer (the prompt and a few hundred
# bytes of metadata) does not.
TOO_LARGE_ANSWER = "a" * (1024 * 1024 - 100)


async def test_an_answer_over_the_send_limit_counts_as_the_client_saw_it(small_messages) -> None:
    """gRPC refuses to send it (RESOURCE_EXHAUSTED, "Sent message larger than max") after
    the handler is done with it; the metric says RESOURCE_EXHAUSTED too, not OK or UNKNOWN."""
    name = "gateway_grpc_calls_total"
    unary = _value(name, method=GENERATE, code="RESOURCE_EXHAUSTED")
    stream = _value(name, method=STREAM, code="RESOURCE_EXHAUSTED")
    async with grpc.aio.insecure_channel(
        small_messages.target, options=[("grpc.max_receive_message_length", 8 * 1024 * 1024)]
    ) as channel:
        stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
        request = text_request("gemini-2.5-flash", TOO_LARGE_ANSWER)
        with pytest.raises(grpc.aio.AioRpcError) as unary_failed:
            await stub.GenerateContent(request)
        request = text_request("gemini-2.5-flash", "[[chunks:1]] " + TOO_LARGE_ANSWER[13:])
        with pytest.raises(grpc.aio.AioRpcError) as stream_failed:
            async for _ in stub.StreamGenerateContent(request):
                pass
    assert unary_failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stream_failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await _settled(name, unary + 1, method=GENERATE, code="RESOURCE_EXHAUSTED") == unary + 1
    assert await _settled(name, stream + 1, method=STREAM, code="RESOURCE_EXHAUSTED") == stream + 1
    assert await _settled("gateway_grpc_calls_in_flight", 0, method=STREAM) == 0


async def test_a_client_that_goes_away_mid_stream_counts_as_cancelled(small_messages) -> None:
    """Its own receive limit makes the client drop the stream: the server sees the client go
    away (its generator closed at a `yield`), CANCELLED, never UNKNOWN."""
    name = "gateway_grpc_calls_total"
    cancelled = _value(name, method=STREAM, code="CANCELLED")
    unknown = _value(name, method=STREAM, code="UNKNOWN")
    async with grpc.aio.insecure_channel(
        small_messages.target, options=[("grpc.max_receive_message_length", 64)]
    ) as channel:
        stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
        # A stream that outlasts the client: had the gateway sent every chunk before gRPC told
        # it the client was gone, the call would have ended OK on its side.
        prompt = "[[chunks:20]] [[chunk_delay_ms:50]] " + "a prompt over sixty-four bytes " * 4
        request = text_request("gemini-2.5-flash", prompt)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in stub.StreamGenerateContent(request):
                pass
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # the client's verdict
    assert await _settled(name, cancelled + 1, method=STREAM, code="CANCELLED") == cancelled + 1
    assert _value(name, method=STREAM, code="UNKNOWN") == unknown
