"""The Vertex AI upstream, against the emulator's publisher-model paths."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest
from google.oauth2 import credentials as oauth2
from google.rpc import error_details_pb2, status_pb2

from gemini_gateway.client.gateway_client import response_text, text_request
from gemini_gateway.emulator.runner import EmulatorHandle
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
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
# Lowercase letters of other scripts (Ll), letters without case (Lo) and an empty value.
INTERNATIONAL_LABELS = {"équipe": "données", "タグ": "検索", "empty": "", "env": "test-1"}


@pytest.fixture(scope="module", params=["aiohttp", "httpx"])
async def vertex(
    request: pytest.FixtureRequest, emulator: EmulatorHandle
) -> AsyncIterator[grpc.aio.Channel]:
    """A gateway whose Vertex AI upstream is the emulator, once per HTTP client."""
    creds = oauth2.Credentials(token="ya29.test-token", quota_project_id="billing")
    flavour = VertexFlavour("my-proj", "europe-west4", emulator.url, creds)
    settings = Settings(upstream="vertex", port=0, http_client=request.param)
    gw = await start_gateway(settings, flavour=flavour)
    try:
        async with grpc.aio.insecure_channel(gw.target) as channel:
            yield channel
    finally:
        await gw.stop(0)


def _bad_request(error: grpc.aio.AioRpcError) -> error_details_pb2.BadRequest:
    """The BadRequest detail of a failed call."""
    (raw,) = [v for k, v in error.trailing_metadata() or () if k == "grpc-status-details-bin"]
    status = status_pb2.Status.FromString(raw)
    (detail,) = [d for d in status.details if d.type_url.endswith("google.rpc.BadRequest")]
    bad_request = error_details_pb2.BadRequest()
    detail.Unpack(bad_request)
    return bad_request


async def test_generate_stream_count_through_vertex_paths(
    vertex: grpc.aio.Channel, emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    stub = generative_service_pb2_grpc.GenerativeServiceStub(vertex)
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
    assert "model" not in seen["body"]  # in the path, as on the Gemini API

    stream = stub.StreamGenerateContent(text_request("gemini-2.5-flash", "v [[chunks:3]]"))
    assert len([chunk async for chunk in stream]) == 3
    seen = await last_upstream_request(http, emulator)
    assert (seen["path"], seen["query"]) == (VERTEX_PATH + ":streamGenerateContent", {"alt": "sse"})

    counted = await stub.CountTokens(
        generative_service_pb2.CountTokensRequest(
            model="models/gemini-2.5-flash",
            contents=[content_pb2.Content(parts=[content_pb2.Part(text="a b c")])],
        )
    )
    assert counted.total_tokens == 3
    assert (await last_upstream_request(http, emulator))["path"] == VERTEX_PATH + ":countTokens"


async def test_methods_without_vertex_path_are_unimplemented(
    vertex: grpc.aio.Channel, emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    before = await last_upstream_request(http, emulator)
    models = model_service_pb2_grpc.ModelServiceStub(vertex)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await models.ListModels(model_service_pb2.ListModelsRequest())
    assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert info.value.details().startswith("ModelService.ListModels has no Vertex AI equivalent")

    stub = generative_service_pb2_grpc.GenerativeServiceStub(vertex)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GenerateContent(text_request("tunedModels/increment-1", "seven"))
    assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert "tunedModels/increment-1" in info.value.details()
    assert "no Vertex AI equivalent" in info.value.details()
    assert await last_upstream_request(http, emulator) == before  # nothing went upstream


async def test_labels_reach_vertex_exactly_as_sent(
    vertex: grpc.aio.Channel, emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    stub = generative_service_pb2_grpc.GenerativeServiceStub(vertex)
    request = text_request("gemini-2.5-flash", "labelled", labels=INTERNATIONAL_LABELS)
    await stub.GenerateContent(request)
    seen = await last_upstream_request(http, emulator)
    assert seen["path"] == VERTEX_PATH + ":generateContent"
    assert seen["labels"] == seen["body"]["labels"] == INTERNATIONAL_LABELS

    stream = stub.StreamGenerateContent(
        text_request("gemini-2.5-flash", "labelled stream", labels=INTERNATIONAL_LABELS)
    )
    assert [chunk async for chunk in stream]
    seen = await last_upstream_request(http, emulator)
    assert seen["path"] == VERTEX_PATH + ":streamGenerateContent"
    assert seen["labels"] == INTERNATIONAL_LABELS


async def test_bad_labels_end_as_invalid_argument_with_bad_request(
    vertex: grpc.aio.Channel,
) -> None:
    # Refused by the gateway's own check or by Vertex AI's: the caller sees the same kind.
    stub = generative_service_pb2_grpc.GenerativeServiceStub(vertex)
    request = text_request("gemini-2.5-flash", "hi", labels={"Team": "search"})
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GenerateContent(request)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    fields = [violation.field for violation in _bad_request(info.value).field_violations]
    assert fields and all(field.startswith("labels") for field in fields)


@pytest.mark.parametrize(
    ("labels", "problem"),
    [
        ({"Team": "search"}, "label key 'Team' contains 'T'"),
        ({"team": "x" * 64}, "is 64 characters long; at most 63 allowed"),
        ({f"k{index}": "" for index in range(65)}, "at most 64 labels are allowed; got 65"),
        ({"9lives": "x"}, "must start with a lowercase letter or an international character"),
    ],
)
async def test_emulator_refuses_bad_labels_on_its_vertex_path(
    emulator: EmulatorHandle, http: aiohttp.ClientSession, labels: dict, problem: str
) -> None:
    body = {"contents": [{"parts": [{"text": "hi"}]}], "labels": labels}
    async with http.post(f"{emulator.url}{VERTEX_PATH}:generateContent", json=body) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    (detail,) = error["details"]
    assert detail["@type"] == BAD_REQUEST
    (violation,) = detail["fieldViolations"]
    assert violation["field"] == "labels"
    assert problem in violation["description"]
    # The same labels on the Gemini API's path are taken as they are.
    gemini = f"{emulator.url}/v1beta/models/gemini-2.5-flash:generateContent"
    async with http.post(gemini, json=body) as response:
        assert response.status == 200
