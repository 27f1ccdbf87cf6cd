"""Many calls opened at once all reach the gateway's handlers and complete.

grpc core keeps calls that the server's handler loop has not taken yet in a pending queue;
by default, past 1,000 of them it cancels a random share before any handler sees them (the
client gets CANCELLED with no message). The gateway raises that limit (server/app.py); the
second test opens more calls at once than grpc's default hard limit (3,000) and fails
without it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gemini_gateway.client.gateway_client import text_request
from gemini_gateway.emulator.runner import EmulatorHandle
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import generative_service_pb2_grpc
from gemini_gateway.server.app import start_gateway
from gemini_gateway.server.config import Settings

pytestmark = pytest.mark.asyncio(loop_scope="session")

STREAMS = 200
CHUNKS = 5
# Long enough that the streams overlap while the rest are still being opened.
CHUNK_DELAY_MS = 200
# Above grpc's default hard limit of pending calls (3,000), where every extra call is cut.
BURST = 3200


def _status(outcome: object) -> str:
    if isinstance(outcome, grpc.aio.AioRpcError):
        return outcome.code().name
    if isinstance(outcome, BaseException):
        return type(outcome).__name__
    return "OK"


async def _chunk_count(call: AsyncIterable[object]) -> int:
    return len([chunk async for chunk in call])


async def test_streams_opened_at_once_all_complete(channel: grpc.aio.Channel) -> None:
    generative = generative_service_pb2_grpc.GenerativeServiceStub(channel)
    prompt = f"[[chunks:{CHUNKS}]] [[chunk_delay_ms:{CHUNK_DELAY_MS}]] Tell a story."
    request = text_request("gemini-2.5-flash", prompt)
    # Every call created before the event loop runs any of them: opened at once, not ramped.
    calls = [generative.StreamGenerateContent(request, timeout=60) for _ in range(STREAMS)]
    outcomes = await asyncio.gather(*(_chunk_count(c) for c in calls), return_exceptions=True)
    assert Counter(map(_status, outcomes)) == {"OK": STREAMS}
    assert Counter(outcomes) == {CHUNKS: STREAMS}  # every chunk of every stream


async def test_burst_beyond_grpc_default_pending_limit_reaches_handlers(
    emulator: EmulatorHandle,
) -> None:
    # Health checks: the cheapest calls the gateway serves, so the burst stays quick. The
    # pending queue is the server's, ahead of every handler, whichever method is called.
    gw = await start_gateway(Settings(upstream="emulator", upstream_url=emulator.url, port=0))
    try:
        async with grpc.aio.insecure_channel(gw.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest()
            calls = [health.Check(request, timeout=60) for _ in range(BURST)]
            replies = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await gw.stop(0)
    assert Counter(map(_status, replies)) == {"OK": BURST}
    serving = health_pb2.HealthCheckResponse.SERVING
    assert {r.status for r in replies if isinstance(r, health_pb2.HealthCheckResponse)} == {serving}
