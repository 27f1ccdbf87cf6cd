"""The upstream pool fails fast: a call that cannot get a connection is refused, never queued.

Gateways with a two-connection pool (`max_connections=2`) in front of the emulator, once per
upstream HTTP client (both must behave the same). Two slow streams hold the pool; a third
call is refused with RESOURCE_EXHAUSTED naming the limit once `pool_wait_s` has passed,
without reaching the upstream, and goes through once a stream has ended. Cancelled calls,
streaming or still waiting, give their connection (or their place) back; a retried request
holds one connection at a time.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from prometheus_client import REGISTRY

from gemini_gateway.client.gateway_client import text_request
from gemini_gateway.emulator.runner import EmulatorHandle
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2_grpc,
)
from gemini_gateway.server.app import Gateway, start_gateway
from gemini_gateway.server.config import Settings
from gemini_gateway.server.retries import RetryReason
from gemini_gateway.server.transports import ConnectionSlots
from tests.integration.conftest import emulator_stats
from tests.integration.test_limits import refusal

MODEL = "models/gemini-2.0-flash"
# About two seconds per stream: ten chunks, 200 ms apart.
SLOW_STREAM = "[[chunks:10]] [[chunk_delay_ms:200]] a long story"
POOL = 2
# Long enough for any condition polled below to come true on a loaded machine.
SETTLE_S = 10.0

TRANSPORTS = pytest.mark.parametrize("http_client", ["aiohttp", "httpx"])


@asynccontextmanager
async def pool_gateway(
    emulator: EmulatorHandle, store: Path, http_client: str, **fields: Any
) -> AsyncIterator[tuple[Gateway, generative_service_pb2_grpc.GenerativeServiceStub]]:
    settings = Settings(
        upstream="emulator",
        upstream_url=emulator.url,
        port=0,
        http_client=http_client,
        store_url=f"sqlite+aiosqlite:///{store}/gw.db",
        record_usage=False,
        max_connections=POOL,
        retry_initial_backoff_s=0.01,
        retry_max_backoff_s=0.02,
        **fields,
    )
    gw = await start_gateway(settings)
    try:
        async with grpc.aio.insecure_channel(gw.target) as channel:
            yield gw, generative_service_pb2_grpc.GenerativeServiceStub(channel)
    finally:
        await gw.stop(0)


def slots(gw: Gateway) -> ConnectionSlots:
    pool = gw.upstream.pool
    assert pool is not None
    return pool


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def retries_made() -> float:
    return sum(
        metric("gateway_upstream_retries_total", {"reason": reason.value}) for reason in RetryReason
    )


async def until(condition: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + SETTLE_S
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"never {what}"
        await asyncio.sleep(0.01)


async def started_upstream(http: aiohttp.ClientSession, emulator: EmulatorHandle) -> int:
    return int((await emulator_stats(http, emulator))["started"])


async def open_streams(
    stub: generative_service_pb2_grpc.GenerativeServiceStub, count: int
) -> list[Any]:
    """`count` slow streams, each past its first chunk: each holds a connection."""
    calls = [
        stub.StreamGenerateContent(text_request(MODEL, f"{SLOW_STREAM} {i}")) for i in range(count)
    ]
    for call in calls:
        assert (await call.read()).candidates
    return calls


async def finish(call: Any) -> int:
    """Read a stream to its end; the number of chunks read."""
    count = 0
    while (await call.read()) is not grpc.aio.EOF:
        count += 1
    return count


@TRANSPORTS
async def test_a_full_pool_refuses_at_once_naming_the_limit_until_a_stream_ends(
    emulator: EmulatorHandle, http: aiohttp.ClientSession, tmp_path: Path, http_client: str
) -> None:
    async with pool_gateway(emulator, tmp_path, http_client, pool_wait_s=0.2) as (gw, stub):
        in_use = metric("gateway_upstream_connections_in_use")
        streams = await open_streams(stub, POOL)
        assert metric("gateway_upstream_connections_in_use") == in_use + POOL
        assert slots(gw).in_use == POOL

        exhausted = metric("gateway_upstream_pool_exhausted_total")
        retries = retries_made()
        sent = await started_upstream(http, emulator)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GenerateContent(text_request(MODEL, "one more"), timeout=30)
        delay, violation = refusal(refused.value)
        assert refused.value.details().startswith(
            "all 2 upstream connections are in use (setting max_connections); "
            "none was free within 0.2 s (setting pool_wait_s); retry in "
        )
        assert violation.quota_id == "upstream_connections"
        assert violation.quota_metric == "max_connections"
        assert violation.quota_value == POOL
        assert 0 < delay <= 120
        assert metric("gateway_upstream_pool_exhausted_total") == exhausted + 1
        assert retries_made() == retries  # never retried
        assert await started_upstream(http, emulator) == sent  # nothing went upstream

        # A stream refused the same way: the rule is the pool's, not the method's.
        refused_stream = stub.StreamGenerateContent(text_request(MODEL, "one more story"))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await finish(refused_stream)
        assert refusal(refused.value)[1].quota_metric == "max_connections"

        assert await finish(streams[0]) == 9  # the rest of its ten chunks
        answer = await stub.GenerateContent(text_request(MODEL, "one more"), timeout=30)
        assert answer.candidates
        assert await finish(streams[1]) == 9
        await until(lambda: slots(gw).in_use == 0, "all connections given back")
        assert metric("gateway_upstream_connections_in_use") == in_use


@TRANSPORTS
async def test_a_cancelled_stream_gives_its_connection_back(
    emulator: EmulatorHandle, tmp_path: Path, http_client: str
) -> None:
    async with pool_gateway(emulator, tmp_path, http_client, pool_wait_s=0.2) as (gw, stub):
        streams = await open_streams(stub, POOL)
        streams[0].cancel()
        await until(lambda: slots(gw).in_use == POOL - 1, "the cancelled stream's slot freed")
        # Taken at once, long before the stream would have ended by itself.
        answer = await stub.GenerateContent(text_request(MODEL, "in its place"), timeout=30)
        assert answer.candidates
        assert slots(gw).in_use == POOL - 1
        streams[1].cancel()
        await until(lambda: slots(gw).in_use == 0, "all connections given back")


@TRANSPORTS
async def test_a_waiting_call_gets_the_first_connection_given_back(
    emulator: EmulatorHandle, tmp_path: Path, http_client: str
) -> None:
    async with pool_gateway(emulator, tmp_path, http_client, pool_wait_s=30) as (gw, stub):
        streams = await open_streams(stub, POOL)
        waiting = asyncio.ensure_future(
            stub.GenerateContent(text_request(MODEL, "patient"), timeout=60)
        )
        await until(lambda: slots(gw).waiting == 1, "the call waiting for a connection")
        assert not waiting.done()
        streams[0].cancel()
        assert (await waiting).candidates
        streams[1].cancel()
        await until(lambda: slots(gw).in_use == 0, "all connections given back")


@TRANSPORTS
async def test_a_call_cancelled_while_waiting_leaves_the_pool_as_it_was(
    emulator: EmulatorHandle, tmp_path: Path, http_client: str
) -> None:
    async with pool_gateway(emulator, tmp_path, http_client, pool_wait_s=30) as (gw, stub):
        streams = await open_streams(stub, POOL)
        waiting = stub.GenerateContent(text_request(MODEL, "impatient"), timeout=60)
        await until(lambda: slots(gw).waiting == 1, "the call waiting for a connection")
        waiting.cancel()
        await until(lambda: slots(gw).waiting == 0, "the cancelled call's place given up")
        assert slots(gw).in_use == POOL
        for call in streams:
            assert await finish(call) == 9
        await until(lambda: slots(gw).in_use == 0, "all connections given back")
        answer = await stub.GenerateContent(text_request(MODEL, "after"), timeout=30)
        assert answer.candidates


@TRANSPORTS
async def test_a_deadline_shorter_than_the_pool_wait_ends_the_wait(
    emulator: EmulatorHandle, tmp_path: Path, http_client: str
) -> None:
    async with pool_gateway(emulator, tmp_path, http_client, pool_wait_s=30) as (gw, stub):
        streams = await open_streams(stub, POOL)
        exhausted = metric("gateway_upstream_pool_exhausted_total")
        with pytest.raises(grpc.aio.AioRpcError) as expired:
            await stub.GenerateContent(text_request(MODEL, "in a hurry"), timeout=0.5)
        assert expired.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        # The gateway gave up waiting with the call, rather than after pool_wait_s.
        await until(lambda: slots(gw).waiting == 0, "the expired call's place given up")
        await until(
            lambda: metric("gateway_upstream_pool_exhausted_total") == exhausted + 1,
            "the expired wait counted",
        )
        for call in streams:
            call.cancel()
        await until(lambda: slots(gw).in_use == 0, "all connections given back")


@TRANSPORTS
async def test_a_retried_request_holds_one_connection_at_a_time(
    emulator: EmulatorHandle, http: aiohttp.ClientSession, tmp_path: Path, http_client: str
) -> None:
    """One stream holds one of the two connections; a call whose first attempt gets 503 is
    sent again on the other, which the failed attempt gave back first."""
    tag = f"tag{uuid.uuid4().hex[:12]}"
    async with pool_gateway(emulator, tmp_path, http_client, pool_wait_s=0.2) as (gw, stub):
        (stream,) = await open_streams(stub, 1)
        sent = await started_upstream(http, emulator)
        retries = metric("gateway_upstream_retries_total", {"reason": "unavailable"})
        answer = await stub.GenerateContent(
            text_request(MODEL, f"[[fault:503,first:1:{tag}]] hello {tag}"), timeout=30
        )
        assert answer.candidates
        assert await started_upstream(http, emulator) == sent + 2
        assert metric("gateway_upstream_retries_total", {"reason": "unavailable"}) == retries + 1
        assert slots(gw).in_use == 1
        stream.cancel()
        await until(lambda: slots(gw).in_use == 0, "all connections given back")
