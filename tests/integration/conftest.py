"""Real parts on loopback ports: the emulator (aiohttp) and the gateway (grpc.aio)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest

from gemini_gateway.emulator.runner import EmulatorHandle, start_emulator
from gemini_gateway.emulator.settings import EmulatorSettings
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2_grpc,
    model_service_pb2_grpc,
)
from gemini_gateway.server.app import Gateway, start_gateway
from gemini_gateway.server.config import Settings


@pytest.fixture(scope="session")
async def emulator() -> AsyncIterator[EmulatorHandle]:
    handle = await start_emulator(EmulatorSettings())
    yield handle
    await handle.close()


@pytest.fixture(scope="session", params=["aiohttp", "httpx"])
async def gateway(
    request: pytest.FixtureRequest, emulator: EmulatorHandle
) -> AsyncIterator[Gateway]:
    """The gateway, once per upstream HTTP client: both must behave the same."""
    gw = await start_gateway(
        Settings(
            upstream="emulator",
            upstream_url=emulator.url,
            port=0,
            api_key="gateway-key",
            http_client=request.param,
        )
    )
    yield gw
    await gw.stop(0)


# Module scope: a module that starts a gateway of its own (its `gateway` fixture) gets a
# channel to that one, and these stubs with it.
@pytest.fixture(scope="module")
async def channel(gateway: Gateway) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(gateway.target) as ch:
        yield ch


@pytest.fixture
def run() -> str:
    """A label value unique to the test: its calls, and only they, carry it."""
    return "r" + secrets.token_hex(6)


@pytest.fixture
def generative(channel: grpc.aio.Channel) -> generative_service_pb2_grpc.GenerativeServiceStub:
    return generative_service_pb2_grpc.GenerativeServiceStub(channel)


@pytest.fixture
def models(channel: grpc.aio.Channel) -> model_service_pb2_grpc.ModelServiceStub:
    return model_service_pb2_grpc.ModelServiceStub(channel)


@pytest.fixture(scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def emulator_stats(http: aiohttp.ClientSession, emulator: EmulatorHandle) -> dict:
    async with http.get(f"{emulator.url}/_emulator/stats") as response:
        return await response.json()


async def last_upstream_request(http: aiohttp.ClientSession, emulator: EmulatorHandle) -> dict:
    async with http.get(f"{emulator.url}/_emulator/requests") as response:
        return (await response.json())[-1]
