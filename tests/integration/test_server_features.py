"""Reflection, health, API keys: the gateway as grpcurl users and operators see it."""

from __future__ import annotations

import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gemini_gateway.client.gateway_client import text_request
from gemini_gateway.emulator.runner import start_emulator
from gemini_gateway.emulator.settings import EmulatorSettings
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import generative_service_pb2_grpc
from gemini_gateway.server.app import start_gateway
from gemini_gateway.server.config import Settings
from tests.integration.conftest import last_upstream_request

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_reflection_lists_services_and_serves_descriptors(channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="google.ai.generativelanguage.v1beta.GenerativeService"
        ),
    ]
    responses = [r async for r in stub.ServerReflectionInfo(iter(requests))]
    names = {s.name for s in responses[0].list_services_response.service}
    assert {
        "google.ai.generativelanguage.v1beta.GenerativeService",
        "google.ai.generativelanguage.v1beta.ModelService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    assert responses[1].file_descriptor_response.file_descriptor_proto


async def test_health_is_serving(channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "google.ai.generativelanguage.v1beta.GenerativeService"):
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_gateway_key_is_sent_upstream_and_never_logged(
    generative, emulator, http, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    await generative.GenerateContent(text_request("gemini-2.5-flash", "key check"))
    upstream = await last_upstream_request(http, emulator)
    assert upstream["headers"].get("x-goog-api-key") == "gateway-key"
    assert "gateway-key" not in caplog.text


async def test_pass_through_uses_the_callers_key() -> None:
    emulator = await start_emulator(EmulatorSettings(api_key="caller-secret"))
    gw = await start_gateway(
        Settings(upstream="gemini", upstream_url=emulator.url, port=0, pass_through_api_key=True)
    )
    try:
        async with grpc.aio.insecure_channel(gw.target) as channel:
            stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
            request = text_request("gemini-2.5-flash", "hi")
            ok = await stub.GenerateContent(
                request, metadata=(("x-goog-api-key", "caller-secret"),)
            )
            assert ok.candidates
            with pytest.raises(grpc.aio.AioRpcError) as wrong:
                await stub.GenerateContent(request, metadata=(("x-goog-api-key", "nope"),))
            assert wrong.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "caller-secret" not in wrong.value.details()
            # No key of its own: refused by the gateway, which never falls back silently to
            # a key of its own (pass_through_fallback_to_gateway_key) nor asks upstream.
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stub.GenerateContent(request)
            assert missing.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert "x-goog-api-key" in (missing.value.details() or "")
    finally:
        await gw.stop(0)
        await emulator.close()
