"""The Vertex AI upstream, against the emulator's publisher-model paths."""

from __future__ import annotations

import grpc
import pytest
from google.oauth2 import credentials as oauth2

from gemini_gateway.client.gateway_client import response_text, text_request
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    content_pb2,
    generative_service_pb2,
    generative_service_pb2_grpc,
    model_service_pb2,
    model_service_pb2_grpc,
)
from gemini_gateway.server.app import start_gateway
from gemini_gateway.server.config import Settings
from gemini_gateway.server.upstream import VertexFlavour
from tests.integration.conftest import last_upstream_request

VERTEX_PATH = (
    "/v1/projects/my-proj/locations/europe-west4/publishers/google/models/gemini-2.5-flash"
)


async def test_generate_stream_count_through_vertex_paths(emulator, http) -> None:
    creds = oauth2.Credentials(token="ya29.test-token", quota_project_id="billing")
    flavour = VertexFlavour("my-proj", "europe-west4", emulator.url, creds)
    gw = await start_gateway(Settings(upstream="vertex", port=0), flavour=flavour)
    try:
        async with grpc.aio.insecure_channel(gw.target) as channel:
            stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
            request = text_request("gemini-2.5-flash", "vertex hello", labels={"env": "test"})
            answer = await stub.GenerateContent(request)
            assert response_text(answer).startswith("Echo: vertex hello")
            seen = await last_upstream_request(http, emulator)
            assert seen["path"] == VERTEX_PATH + ":generateContent"
            headers = {name.lower(): value for name, value in seen["headers"].items()}
            assert headers["authorization"] == "Bearer ya29.test-token"
            assert headers["x-goog-user-project"] == "billing"
            assert "x-goog-api-key" not in headers
            assert seen["body"]["labels"] == {"env": "test"}

            stream = stub.StreamGenerateContent(text_request("gemini-2.5-flash", "v [[chunks:3]]"))
            assert len([chunk async for chunk in stream]) == 3
            assert (await last_upstream_request(http, emulator))["path"] == (
                VERTEX_PATH + ":streamGenerateContent"
            )

            counted = await stub.CountTokens(
                generative_service_pb2.CountTokensRequest(
                    model="models/gemini-2.5-flash",
                    contents=[content_pb2.Content(parts=[content_pb2.Part(text="a b c")])],
                )
            )
            assert counted.total_tokens == 3

            models = model_service_pb2_grpc.ModelServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await models.ListModels(model_service_pb2.ListModelsRequest())
            assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
    finally:
        await gw.stop(0)
