"""One project's slow calls must not starve another's: the upstream pool is shared fairly.

A gateway with a small upstream pool (8 connections) and two projects. `noisy` sends more
slow calls (the emulator holds each for NOISY_MS before answering) than the pool holds, all
at once and without a deadline, as the caller in the issue did. With the reserve
(reserved_pool_share 0.5: 2 connections kept for each project, 4 shared), `noisy` gets 6
of them and the rest of its calls are refused at once with RESOURCE_EXHAUSTED, while `quiet`
keeps its latency. Without the reserve (the control), `quiet` waits behind `noisy`'s calls
for a free connection, past its deadline: the scenario does starve a project when nothing
shares the pool out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from gemini_gateway.client.gateway_client import text_request
from gemini_gateway.emulator.runner import EmulatorHandle
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2,
    generative_service_pb2_grpc,
)
from tests.integration.test_limits import (
    caller,
    gateway_settings,
    project,
    refusal,
    start_limited_gateway,
    upstream_open,
)

MODEL = "models/gemini-2.0-flash"
POOL = 8
NOISY_CALLS = 12
NOISY_MS = 3000
QUIET_CALLS = 8
# quiet's calls during the load may take this many times its slowest baseline call, plus a
# fixed allowance, and never as long as half of noisy's delay (which starving would cost).
SLOWDOWN = 10
ALLOWANCE_S = 0.3
BOUND_CAP_S = NOISY_MS / 1000 / 2


@asynccontextmanager
async def gateway_stub(
    emulator: EmulatorHandle, store: Path, share: float, **fields: Any
) -> AsyncIterator[generative_service_pb2_grpc.GenerativeServiceStub]:
    """A gateway with the 8-connection pool, two projects and this reserved_pool_share."""
    settings = gateway_settings(
        emulator,
        str(store),
        max_connections=POOL,
        reserved_pool_share=share,
        projects={"noisy": project("noisy"), "quiet": project("quiet")},
        **fields,
    )
    gw = await start_limited_gateway(settings)
    try:
        async with grpc.aio.insecure_channel(gw.target) as channel:
            yield generative_service_pb2_grpc.GenerativeServiceStub(channel)
    finally:
        await gw.stop(0)


async def _quiet_latencies(
    stub: generative_service_pb2_grpc.GenerativeServiceStub, count: int, timeout_s: float = 10
) -> list[float]:
    latencies = []
    for i in range(count):
        started = time.perf_counter()
        await stub.GenerateContent(
            text_request(MODEL, f"quiet call {i}"), metadata=caller("quiet"), timeout=timeout_s
        )
        latencies.append(time.perf_counter() - started)
    return latencies


async def _noisy_call(
    stub: generative_service_pb2_grpc.GenerativeServiceStub, i: int
) -> generative_service_pb2.GenerateContentResponse | grpc.aio.AioRpcError:
    request = text_request(MODEL, f"[[fault:headers_delay:{NOISY_MS}]] noisy call {i}")
    try:
        return await stub.GenerateContent(request, metadata=caller("noisy"))  # no deadline
    except grpc.aio.AioRpcError as exc:
        return exc


async def _wait_for_open(
    http: aiohttp.ClientSession, emulator: EmulatorHandle, wanted: int
) -> None:
    deadline = time.monotonic() + 5
    while await upstream_open(http, emulator) < wanted:
        assert time.monotonic() < deadline, f"never {wanted} upstream calls open"
        await asyncio.sleep(0.02)


async def test_a_noisy_project_cannot_starve_a_quiet_one(
    emulator: EmulatorHandle, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with gateway_stub(emulator, tmp_path, share=0.5) as stub:
        await _fair_share(stub, emulator, http)


async def _fair_share(
    stub: generative_service_pb2_grpc.GenerativeServiceStub,
    emulator: EmulatorHandle,
    http: aiohttp.ClientSession,
) -> None:
    await _quiet_latencies(stub, 2)  # warm: connections open
    idle = await upstream_open(http, emulator)  # other tests' leftovers, if any
    baseline = await _quiet_latencies(stub, QUIET_CALLS)
    bound = min(BOUND_CAP_S, max(baseline) * SLOWDOWN + ALLOWANCE_S)

    noisy = [asyncio.ensure_future(_noisy_call(stub, i)) for i in range(NOISY_CALLS)]
    # noisy's own 2 reserved connections and the 4 shared: 6 calls upstream.
    await _wait_for_open(http, emulator, idle + 6)
    under_load = await _quiet_latencies(stub, QUIET_CALLS)  # any refusal would raise
    # quiet uses both its reserved connections at once, too.
    for pair in await asyncio.gather(*(_quiet_latencies(stub, 1) for _ in range(2))):
        under_load += pair
    still_running = sum(not call.done() for call in noisy)
    results = await asyncio.gather(*noisy)

    assert max(under_load) <= bound, (baseline, under_load)
    assert still_running == 6  # quiet's calls all ran while noisy's held their connections
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    answered = [r for r in results if not isinstance(r, grpc.aio.AioRpcError)]
    assert len(answered) == 6 and len(refused) == NOISY_CALLS - 6
    for exc in refused:
        delay, violation = refusal(exc)
        assert violation.quota_id == "upstream_pool"
        assert violation.subject == "projects/noisy"
        assert 0 < delay <= 60
    assert await upstream_open(http, emulator) == idle


async def test_without_the_reserve_the_noisy_project_starves_the_quiet_one(
    emulator: EmulatorHandle, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The control: the same load with reserved_pool_share 0 (no limits at all)."""
    # Calls may wait for a connection as long as they like (pool_wait_s): the silent queue.
    async with gateway_stub(emulator, tmp_path, share=0.0, pool_wait_s=3600) as stub:
        await _starved(stub, emulator, http)


async def _starved(
    stub: generative_service_pb2_grpc.GenerativeServiceStub,
    emulator: EmulatorHandle,
    http: aiohttp.ClientSession,
) -> None:
    await _quiet_latencies(stub, 2)
    idle = await upstream_open(http, emulator)
    noisy = [asyncio.ensure_future(_noisy_call(stub, i)) for i in range(NOISY_CALLS)]
    await _wait_for_open(
        http, emulator, idle + POOL
    )  # the whole pool, and 4 calls queued behind it
    with pytest.raises(grpc.aio.AioRpcError) as starved:
        await _quiet_latencies(stub, 1, timeout_s=BOUND_CAP_S)
    assert starved.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert not any(call.done() for call in noisy)  # none refused: nothing limits them
    for call in noisy:
        call.cancel()  # the gateway closes their upstream requests at once
    await asyncio.gather(*noisy, return_exceptions=True)
    deadline = time.monotonic() + 5
    while await upstream_open(http, emulator) > idle:
        assert time.monotonic() < deadline, "cancelled calls left upstream requests open"
        await asyncio.sleep(0.02)
