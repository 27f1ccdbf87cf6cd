"""Retries through a real gateway against the emulator's faults (and a dropping upstream).

Each test marks its prompts with a tag of its own, so that the emulator's request log tells
how many upstream requests its calls made, and `first:<n>:<tag>` fault lists are its own.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from prometheus_client import REGISTRY

from gemini_gateway.client.gateway_client import text_request
from gemini_gateway.emulator.runner import EmulatorHandle
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2_grpc,
    model_service_pb2,
    model_service_pb2_grpc,
    tuned_model_pb2,
)
from gemini_gateway.server.app import Gateway, start_gateway
from gemini_gateway.server.config import Settings

MODEL = "gemini-2.5-flash"
# Quick backoff, and a budget that never gets in the way unless a test asks for one.
FAST = {"retry_initial_backoff_s": 0.01, "retry_max_backoff_s": 0.02, "retry_budget_min_per_s": 1e3}


@asynccontextmanager
async def _gateway(upstream_url: str, **settings: Any) -> AsyncIterator[Gateway]:
    gateway = await start_gateway(
        Settings(upstream="emulator", upstream_url=upstream_url, port=0, **{**FAST, **settings})
    )
    try:
        yield gateway
    finally:
        await gateway.stop(0)


@asynccontextmanager
async def _generative(
    gateway: Gateway,
) -> AsyncIterator[generative_service_pb2_grpc.GenerativeServiceStub]:
    async with grpc.aio.insecure_channel(gateway.target) as channel:
        yield generative_service_pb2_grpc.GenerativeServiceStub(channel)


def _tag() -> str:
    return f"tag{uuid.uuid4().hex[:12]}"


async def _upstream_requests(
    http: aiohttp.ClientSession, emulator: EmulatorHandle, tag: str
) -> int:
    async with http.get(f"{emulator.url}/_emulator/requests") as response:
        requests = await response.json()
    return sum(tag in json.dumps(request["body"]) for request in requests)


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _retries(reason: str) -> float:
    return _metric("gateway_upstream_retries_total", reason=reason)


@pytest.mark.parametrize("http_client", ["aiohttp", "httpx"])
async def test_unavailable_twice_then_answered(
    emulator: EmulatorHandle, http: aiohttp.ClientSession, http_client: str
) -> None:
    tag = _tag()
    before = _retries("unavailable")
    async with _gateway(emulator.url, http_client=http_client) as gateway:
        async with _generative(gateway) as stub:
            prompt = f"[[fault:503,first:2:{tag}]] hello {tag}"
            answer = await stub.GenerateContent(text_request(MODEL, prompt), timeout=10)
    assert f"hello {tag}" in answer.candidates[0].content.parts[0].text
    assert await _upstream_requests(http, emulator, tag) == 3
    assert _retries("unavailable") == before + 2


async def test_stream_opening_is_retried_and_each_chunk_arrives_once(
    emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    tag = _tag()
    async with _gateway(emulator.url) as gateway, _generative(gateway) as stub:
        prompt = f"[[fault:503,first:1:{tag}]] [[chunks:3]] story {tag}"
        chunks = [c async for c in stub.StreamGenerateContent(text_request(MODEL, prompt))]
    assert len(chunks) == 3
    text = "".join(c.candidates[0].content.parts[0].text for c in chunks)
    assert text.count(tag) == 1
    assert await _upstream_requests(http, emulator, tag) == 2


@pytest.mark.parametrize("fault", ["stream_error:503", "disconnect"])
async def test_no_retry_once_a_chunk_reached_the_caller(
    emulator: EmulatorHandle, http: aiohttp.ClientSession, fault: str
) -> None:
    tag = _tag()
    before = {reason: _retries(reason) for reason in ("unavailable", "connection_broken")}
    async with _gateway(emulator.url) as gateway, _generative(gateway) as stub:
        call = stub.StreamGenerateContent(
            text_request(MODEL, f"[[chunks:3]] [[fault:{fault}]] story {tag}"), timeout=10
        )
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            async for chunk in call:
                received.append(chunk)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(received) == 1
    assert await _upstream_requests(http, emulator, tag) == 1
    assert {reason: _retries(reason) for reason in before} == before


async def test_connection_broken_before_the_answer_is_retried_for_a_generation(
    emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    tag = _tag()
    before = _retries("connection_broken")
    async with _gateway(emulator.url) as gateway, _generative(gateway) as stub:
        prompt = f"[[fault:disconnect,first:1:{tag}]] hi {tag}"
        await stub.GenerateContent(text_request(MODEL, prompt), timeout=10)
    assert await _upstream_requests(http, emulator, tag) == 2
    assert _retries("connection_broken") == before + 1


async def test_long_retry_info_goes_back_to_the_caller_at_once(
    emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    """The emulator's 429 asks for 7 s: over retry_max_server_delay_s (2 s by default)."""
    tag = _tag()
    skipped = _metric("gateway_upstream_retries_skipped_total", why="server_delay")
    async with _gateway(emulator.url) as gateway, _generative(gateway) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GenerateContent(text_request(MODEL, f"[[fault:429]] {tag}"))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = status_pb2.Status.FromString(
        dict(refused.value.trailing_metadata())["grpc-status-details-bin"]
    )
    delays = []
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            delays.append(info.retry_delay.seconds)
    assert delays == [7]  # the caller still learns how long to wait
    assert await _upstream_requests(http, emulator, tag) == 1
    assert _metric("gateway_upstream_retries_skipped_total", why="server_delay") == skipped + 1


@pytest.mark.parametrize("streaming", [False, True])
async def test_a_wait_past_the_deadline_is_not_started(
    emulator: EmulatorHandle, http: aiohttp.ClientSession, streaming: bool
) -> None:
    """RetryInfo's 7 s is allowed here, but the call has 3 s: the 429 comes back at once
    (RESOURCE_EXHAUSTED, not DEADLINE_EXCEEDED after waiting)."""
    tag = _tag()
    skipped = _metric("gateway_upstream_retries_skipped_total", why="deadline")
    async with _gateway(emulator.url, retry_max_server_delay_s=30) as gateway:
        async with _generative(gateway) as stub:
            request = text_request(MODEL, f"[[fault:429]] {tag}")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                if streaming:
                    async for _ in stub.StreamGenerateContent(request, timeout=3):
                        pass
                else:
                    await stub.GenerateContent(request, timeout=3)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await _upstream_requests(http, emulator, tag) == 1
    assert _metric("gateway_upstream_retries_skipped_total", why="deadline") == skipped + 1


async def test_budget_runs_dry_under_sustained_failure(
    emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    """Every call fails: with 20 % of 20 calls, 4 retries in all instead of 2 per call."""
    tag = _tag()
    exhausted = _metric("gateway_upstream_retry_budget_exhausted_total")
    made = _retries("unavailable")
    settings = {"retry_budget_ratio": 0.2, "retry_budget_min_per_s": 0.0}
    async with _gateway(emulator.url, **settings) as gateway, _generative(gateway) as stub:
        for number in range(20):
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.GenerateContent(text_request(MODEL, f"[[fault:503]] {tag} {number}"))
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    retries = _retries("unavailable") - made
    assert retries <= 4
    assert await _upstream_requests(http, emulator, tag) == 20 + retries
    assert _metric("gateway_upstream_retry_budget_exhausted_total") - exhausted >= 16


async def test_healthy_upstream_gets_exactly_one_request_per_call(
    emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    tag = _tag()
    before = {r: _retries(r) for r in ("unavailable", "resource_exhausted", "connect_failed")}
    async with _gateway(emulator.url) as gateway, _generative(gateway) as stub:
        for number in range(10):
            await stub.GenerateContent(text_request(MODEL, f"{tag} {number}"))
        for number in range(5):
            request = text_request(MODEL, f"{tag} s{number}")
            assert [c async for c in stub.StreamGenerateContent(request)]
    assert await _upstream_requests(http, emulator, tag) == 15
    assert {reason: _retries(reason) for reason in before} == before


async def test_retries_off(emulator: EmulatorHandle, http: aiohttp.ClientSession) -> None:
    tag = _tag()
    async with _gateway(emulator.url, retries_enabled=False) as gateway:
        async with _generative(gateway) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.GenerateContent(text_request(MODEL, f"[[fault:503,first:2:{tag}]]"))
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await _upstream_requests(http, emulator, tag) == 1


def _create_tuned_model(name: str) -> model_service_pb2.CreateTunedModelRequest:
    examples = [tuned_model_pb2.TuningExample(text_input="1", output="2")] * 4
    return model_service_pb2.CreateTunedModelRequest(
        tuned_model=tuned_model_pb2.TunedModel(
            display_name=name,
            base_model="models/gemini-1.5-flash-001-tuning",
            tuning_task=tuned_model_pb2.TuningTask(
                training_data=tuned_model_pb2.Dataset(
                    examples=tuned_model_pb2.TuningExamples(examples=examples)
                )
            ),
        )
    )


class _DroppingUpstream:
    """Reads each request whole, then closes the connection without an answer."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._drop, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _drop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length) if length else b""
        self.requests.append(head.split(b"\r\n", 1)[0] + b" " + body)
        writer.close()


@pytest.mark.parametrize("http_client", ["aiohttp", "httpx"])
async def test_connection_dropped_after_sending_is_never_retried_for_create(
    http_client: str,
) -> None:
    """CreateTunedModel may have been carried out: sent once. A generation: max_attempts."""
    upstream = _DroppingUpstream()
    async with upstream as url, _gateway(url, http_client=http_client) as gateway:
        async with grpc.aio.insecure_channel(gateway.target) as channel:
            models = model_service_pb2_grpc.ModelServiceStub(channel)
            create = _create_tuned_model("once")
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await models.CreateTunedModel(create, timeout=10)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            assert len(upstream.requests) == 1
            generative = generative_service_pb2_grpc.GenerativeServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError):
                await generative.GenerateContent(text_request(MODEL, "hi"), timeout=10)
            assert len(upstream.requests) == 1 + 3


@pytest.mark.parametrize("http_client", ["aiohttp", "httpx"])
async def test_connection_refused_is_retried_for_every_method(http_client: str) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()  # nothing listens there now: each connection is refused
    before = _retries("connect_failed")
    async with _gateway(f"http://127.0.0.1:{port}", http_client=http_client) as gateway:
        async with grpc.aio.insecure_channel(gateway.target) as channel:
            models = model_service_pb2_grpc.ModelServiceStub(channel)
            create = _create_tuned_model("never sent")
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await models.CreateTunedModel(create, timeout=10)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert _retries("connect_failed") == before + 2
