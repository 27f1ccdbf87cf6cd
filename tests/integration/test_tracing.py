"""Tracing and request ids through a real gateway and the emulator.

Spans are read from the SDK's in-memory exporter added to the gateway's own provider
(OTEL_TRACES_EXPORTER=none, so nothing else exports), or, for the OTLP set-up, from a
real OTLP/gRPC receiver on a loopback port.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gemini_gateway.client.gateway_client import text_request
from gemini_gateway.emulator.runner import EmulatorHandle
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2_grpc,
)
from gemini_gateway.server import log_format
from gemini_gateway.server.app import LOCAL_SERVICES, Gateway, start_gateway
from gemini_gateway.server.config import Settings
from gemini_gateway.server.http_face import build_http_face, start_http_face
from gemini_gateway.server.startup import StartupError

MODEL = "gemini-2.5-flash"
API_KEY = "gateway-key-for-tracing-0123456789"
V1BETA = "google.ai.generativelanguage.v1beta.GenerativeService"


@asynccontextmanager
async def _traced_gateway(
    emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch, **settings: Any
) -> AsyncIterator[tuple[Gateway, InMemorySpanExporter]]:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    gateway = await start_gateway(
        Settings(
            upstream="emulator",
            upstream_url=emulator.url,
            port=0,
            api_key=API_KEY,
            tracing_enabled=True,
            retry_initial_backoff_s=0.01,
            **settings,
        )
    )
    assert gateway.tracing is not None
    exporter = InMemorySpanExporter()
    gateway.tracing.provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        yield gateway, exporter
    finally:
        await gateway.stop(0)


async def _spans(exporter: InMemorySpanExporter, count: int) -> list[ReadableSpan]:
    """The finished spans once there are `count`: the server span ends as the handler
    unwinds, which may be just after the caller has its answer."""
    for _ in range(500):
        if len(exporter.get_finished_spans()) >= count:
            break
        await asyncio.sleep(0.01)
    return list(exporter.get_finished_spans())


def _one(spans: list[ReadableSpan], kind: SpanKind) -> ReadableSpan:
    found = [span for span in spans if span.kind is kind]
    assert len(found) == 1, [(span.name, span.kind) for span in spans]
    return found[0]


def _texts(spans: list[ReadableSpan]) -> str:
    """Everything the spans say, as text."""
    parts = []
    for span in spans:
        parts.append(span.name)
        parts.extend(f"{k}={v}" for k, v in (span.attributes or {}).items())
        for event in span.events:
            parts.append(event.name)
            parts.extend(f"{k}={v}" for k, v in (event.attributes or {}).items())
        parts.append(str(span.status.description))
    return "\n".join(parts)


async def _last_request(http: aiohttp.ClientSession, emulator: EmulatorHandle) -> dict[str, Any]:
    async with http.get(f"{emulator.url}/_emulator/requests") as response:
        return (await response.json())[-1]


async def test_call_span_continues_the_callers_trace_and_goes_upstream(
    emulator: EmulatorHandle, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace_id, parent_id = uuid.uuid4().int, 0x1122334455667788
    prompt = f"a secret plan {uuid.uuid4().hex}"
    metadata = (
        ("traceparent", f"00-{trace_id:032x}-{parent_id:016x}-01"),
        ("x-request-id", "req-trace-1"),
    )
    async with _traced_gateway(emulator, monkeypatch) as (gateway, exporter):
        async with grpc.aio.insecure_channel(gateway.target) as channel:
            stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
            call = stub.GenerateContent(text_request(MODEL, prompt), metadata=metadata)
            await call
            assert ("x-request-id", "req-trace-1") in tuple(await call.trailing_metadata())
        spans = await _spans(exporter, 2)
        upstream = await _last_request(http, emulator)

    server, client = _one(spans, SpanKind.SERVER), _one(spans, SpanKind.CLIENT)
    assert server.name == f"{V1BETA}/GenerateContent"
    assert server.context is not None and client.context is not None
    assert server.context.trace_id == trace_id
    assert server.parent is not None and server.parent.span_id == parent_id
    assert server.attributes is not None and client.attributes is not None
    assert server.attributes["rpc.system"] == "grpc"
    assert server.attributes["rpc.method"] == "GenerateContent"
    assert server.attributes["rpc.grpc.status_code"] == 0
    assert server.attributes["gateway.project"] == "default"
    assert server.attributes["gateway.request_id"] == "req-trace-1"
    # The upstream request is the call's child, and carries its context upstream.
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    assert client.context.trace_id == trace_id
    assert client.attributes["http.request.method"] == "POST"
    assert client.attributes["url.path"] == f"/v1beta/models/{MODEL}:generateContent"
    assert "?" not in str(client.attributes["url.full"])
    assert client.attributes["http.response.status_code"] == 200
    sent = upstream["headers"]["traceparent"]
    assert sent == f"00-{trace_id:032x}-{client.context.span_id:016x}-01"
    # Nothing secret or private: no key, no prompt, no answer.
    said = _texts(spans)
    assert API_KEY not in said and prompt not in said and "Echo" not in said


async def test_a_call_through_the_http_face_continues_the_callers_trace(
    emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The REST/JSON face passes `traceparent` and `X-Request-Id` on to the gRPC call: its
    span is the HTTP caller's child and carries the caller's request id, which comes back."""
    trace_id, parent_id = uuid.uuid4().int, 0x0102030405060708
    headers = {
        "traceparent": f"00-{trace_id:032x}-{parent_id:016x}-01",
        "X-Request-Id": "face-trace-1",
    }
    async with _traced_gateway(emulator, monkeypatch) as (gateway, exporter):
        face = await start_http_face(
            build_http_face(LOCAL_SERVICES, gateway.target), "127.0.0.1", 0
        )
        try:
            async with aiohttp.ClientSession(base_url=face.url) as http:
                async with http.get("/v1/projects/-/datasets", headers=headers) as response:
                    assert response.status == 200
                    assert response.headers["X-Request-Id"] == "face-trace-1"
        finally:
            await face.close()
        spans = await _spans(exporter, 1)
    server = _one(spans, SpanKind.SERVER)
    assert server.name == "gemini.gateway.v1.DatasetService/ListDatasets"
    assert server.context is not None and server.context.trace_id == trace_id
    assert server.parent is not None and server.parent.span_id == parent_id
    assert server.attributes is not None
    assert server.attributes["gateway.request_id"] == "face-trace-1"


async def test_each_attempt_is_a_span_and_the_retry_an_event(
    emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    tag = uuid.uuid4().hex[:12]
    async with _traced_gateway(emulator, monkeypatch) as (gateway, exporter):
        async with grpc.aio.insecure_channel(gateway.target) as channel:
            stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
            prompt = f"[[fault:503,first:1:{tag}]] hi"
            await stub.GenerateContent(text_request(MODEL, prompt))
        spans = await _spans(exporter, 3)
    server = _one(spans, SpanKind.SERVER)
    attempts = sorted(
        (span for span in spans if span.kind is SpanKind.CLIENT), key=lambda s: s.start_time or 0
    )
    assert [a.attributes and a.attributes["http.response.status_code"] for a in attempts] == [
        503,
        200,
    ]
    assert attempts[0].status.status_code is StatusCode.ERROR
    assert attempts[1].attributes and attempts[1].attributes["http.request.resend_count"] == 1
    assert all(a.parent and server.context and a.parent.span_id == server.context.span_id
               for a in attempts)  # fmt: skip
    (retry,) = [event for event in server.events if event.name == "retry"]
    assert retry.attributes and retry.attributes["gateway.retry.reason"] == "unavailable"
    assert server.status.status_code is not StatusCode.ERROR


async def test_stream_span_and_its_failure(
    emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _traced_gateway(emulator, monkeypatch) as (gateway, exporter):
        async with grpc.aio.insecure_channel(gateway.target) as channel:
            stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
            request = text_request(MODEL, "[[chunks:3]] [[fault:stream_error:500]] story")
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                async for _ in stub.StreamGenerateContent(request):
                    pass
        spans = await _spans(exporter, 2)
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    server, client = _one(spans, SpanKind.SERVER), _one(spans, SpanKind.CLIENT)
    assert server.name == f"{V1BETA}/StreamGenerateContent"
    assert server.attributes and server.attributes["rpc.grpc.status_code"] == 13
    assert server.status.status_code is StatusCode.ERROR
    assert client.parent and server.context and client.parent.span_id == server.context.span_id
    assert client.attributes and client.attributes["url.path"].endswith(":streamGenerateContent")
    assert client.attributes["error.type"] == "INTERNAL"


async def test_off_by_default_and_nothing_goes_upstream(
    emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(Settings(upstream="emulator", upstream_url=emulator.url, port=0))
    try:
        assert gateway.tracing is None
        async with grpc.aio.insecure_channel(gateway.target) as channel:
            stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
            traceparent = f"00-{uuid.uuid4().int:032x}-{0x99:016x}-01"
            await stub.GenerateContent(
                text_request(MODEL, "untraced"), metadata=(("traceparent", traceparent),)
            )
        assert "traceparent" not in (await _last_request(http, emulator))["headers"]
    finally:
        await gateway.stop(0)


class _Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver, as a collector's."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        with self.lock:
            self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def otlp_receiver() -> Iterator[tuple[_Receiver, int]]:
    # A thread-pool server: the exporter's (blocking) export must not wait on this loop.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    receiver = _Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield receiver, port
    server.stop(0)


async def test_otlp_export_set_by_the_standard_variables(
    emulator: EmulatorHandle,
    monkeypatch: pytest.MonkeyPatch,
    otlp_receiver: tuple[_Receiver, int],
) -> None:
    receiver, port = otlp_receiver
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)  # otlp, the default
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-under-test")
    gateway = await start_gateway(
        Settings(upstream="emulator", upstream_url=emulator.url, port=0, tracing_enabled=True)
    )
    try:
        async with grpc.aio.insecure_channel(gateway.target) as channel:
            stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
            await stub.GenerateContent(text_request(MODEL, "exported"))
    finally:
        await gateway.stop(0)  # flushes what is left to export
    with receiver.lock:
        exported = list(receiver.requests)
    names, services = set(), set()
    for request in exported:
        for resource_spans in request.resource_spans:
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    services.add(attribute.value.string_value)
            for scope in resource_spans.scope_spans:
                names.update(span.name for span in scope.spans)
    assert services == {"gateway-under-test"}
    assert {f"{V1BETA}/GenerateContent", "POST"} <= names


async def test_sdk_disabled_wins_over_the_setting(
    emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    gateway = await start_gateway(
        Settings(upstream="emulator", upstream_url=emulator.url, port=0, tracing_enabled=True)
    )
    try:
        assert gateway.tracing is None
    finally:
        await gateway.stop(0)


async def test_every_log_line_of_a_call_carries_its_request_id(emulator: EmulatorHandle) -> None:
    """The metrics interceptor logs each call at DEBUG from inside it: with JSON logs that
    line has the call's request id, the caller's own or a new one; the caller gets it back
    in the trailers (failed calls too, beside their details) and, on a stream, at once."""
    out = io.StringIO()
    handler = log_format.make_handler("json", out)
    logger = logging.getLogger("gemini_gateway.server.metrics")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    gateway = await start_gateway(Settings(upstream="emulator", upstream_url=emulator.url, port=0))
    try:
        async with grpc.aio.insecure_channel(gateway.target) as channel:
            stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
            mine = stub.GenerateContent(
                text_request(MODEL, "a"), metadata=(("x-request-id", "caller-id-42"),)
            )
            await mine
            given = stub.GenerateContent(
                text_request(MODEL, "b"), metadata=(("x-request-id", "not an id; x"),)
            )
            await given
            new_id = dict(await given.trailing_metadata())["x-request-id"]
            stream = stub.StreamGenerateContent(text_request(MODEL, "c"))
            stream_id = dict(await stream.initial_metadata())["x-request-id"]
            assert [chunk async for chunk in stream]
            refused = stub.GenerateContent(
                text_request(MODEL, "[[fault:429]]"), metadata=(("x-request-id", "quota-1"),)
            )
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await refused
            trailers = dict(failed.value.trailing_metadata())
    finally:
        await gateway.stop(0)
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert dict(await mine.trailing_metadata())["x-request-id"] == "caller-id-42"
    assert len(new_id) == 32 and len(stream_id) == 32
    assert dict(await stream.trailing_metadata())["x-request-id"] == stream_id
    assert trailers["x-request-id"] == "quota-1" and "grpc-status-details-bin" in trailers
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    ids = {line.get("request_id") for line in lines if "GenerateContent" in line["message"]}
    assert {"caller-id-42", new_id, stream_id, "quota-1"} <= ids
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)


async def test_an_unknown_exporter_stops_start_up_saying_so(
    emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin_typo")
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    with pytest.raises(StartupError) as refused:
        await start_gateway(
            Settings(upstream="emulator", upstream_url=emulator.url, port=0, tracing_enabled=True)
        )
    assert "zipkin_typo" in refused.value.message and "OTEL_TRACES_EXPORTER" in str(refused.value)
