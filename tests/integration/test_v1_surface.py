"""Google's v1 surface through the gateway: every v1 method goes to its /v1 path, and generate
calls get their labels checked and are metered exactly as on v1beta."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gemini_gateway.client.gateway_client import text_request
from gemini_gateway.emulator.runner import EmulatorHandle
from gemini_gateway.generated.gemini.gateway.v1 import usage_pb2, usage_pb2_grpc
from gemini_gateway.generated.google.ai.generativelanguage.v1 import (
    content_pb2,
    generative_service_pb2,
    generative_service_pb2_grpc,
    model_service_pb2,
    model_service_pb2_grpc,
)
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2_grpc as v1beta_generative_service_pb2_grpc,
)
from gemini_gateway.server.app import Gateway, start_gateway
from gemini_gateway.server.config import Settings
from tests.integration.conftest import emulator_stats, last_upstream_request

MODEL = "models/gemini-2.5-flash"
EMBEDDING_MODEL = "models/text-embedding-004"


@pytest.fixture(scope="module")
async def gateway(
    emulator: EmulatorHandle, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    store = tmp_path_factory.mktemp("v1") / "gw.db"
    gw = await start_gateway(
        Settings(
            upstream="emulator",
            upstream_url=emulator.url,
            port=0,
            store_url=f"sqlite+aiosqlite:///{store}",
        )
    )
    yield gw
    await gw.stop(0)


@pytest.fixture
def generative(channel: grpc.aio.Channel) -> generative_service_pb2_grpc.GenerativeServiceStub:
    """The v1 GenerativeService (conftest's is v1beta's)."""
    return generative_service_pb2_grpc.GenerativeServiceStub(channel)


@pytest.fixture
def models(channel: grpc.aio.Channel) -> model_service_pb2_grpc.ModelServiceStub:
    return model_service_pb2_grpc.ModelServiceStub(channel)


@pytest.fixture
def usage(channel: grpc.aio.Channel) -> usage_pb2_grpc.UsageServiceStub:
    return usage_pb2_grpc.UsageServiceStub(channel)


def content(text: str) -> content_pb2.Content:
    return content_pb2.Content(role="user", parts=[content_pb2.Part(text=text)])


def request(
    prompt: str, labels: dict[str, str] | None = None
) -> generative_service_pb2.GenerateContentRequest:
    return generative_service_pb2.GenerateContentRequest(
        model=MODEL, contents=[content(prompt)], labels=labels or {}
    )


async def test_every_v1_method_goes_to_its_v1_path(
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    models: model_service_pb2_grpc.ModelServiceStub,
    http: aiohttp.ClientSession,
    emulator: EmulatorHandle,
) -> None:
    async def sent() -> dict:
        return await last_upstream_request(http, emulator)

    answer = await generative.GenerateContent(request("hello v1", {"team": "search"}))
    assert answer.candidates[0].content.parts[0].text.startswith("Echo: hello v1")
    assert answer.usage_metadata.total_token_count > 0
    upstream = await sent()
    assert upstream["path"] == "/v1/models/gemini-2.5-flash:generateContent"
    assert upstream["body"]["labels"] == {"team": "search"}

    chunks = [c async for c in generative.StreamGenerateContent(request("story [[chunks:3]]"))]
    assert len(chunks) == 3
    assert chunks[-1].usage_metadata.total_token_count > 0
    upstream = await sent()
    assert upstream["path"] == "/v1/models/gemini-2.5-flash:streamGenerateContent"
    assert upstream["query"].get("alt") == "sse"

    counted = await generative.CountTokens(
        generative_service_pb2.CountTokensRequest(model=MODEL, contents=[content("count me")])
    )
    assert counted.total_tokens > 0
    assert (await sent())["path"] == "/v1/models/gemini-2.5-flash:countTokens"

    embedded = await generative.EmbedContent(
        generative_service_pb2.EmbedContentRequest(model=EMBEDDING_MODEL, content=content("a"))
    )
    assert embedded.embedding.values
    assert (await sent())["path"] == "/v1/models/text-embedding-004:embedContent"

    one = generative_service_pb2.EmbedContentRequest(model=EMBEDDING_MODEL, content=content("b"))
    batch = await generative.BatchEmbedContents(
        generative_service_pb2.BatchEmbedContentsRequest(model=EMBEDDING_MODEL, requests=[one, one])
    )
    assert len(batch.embeddings) == 2
    assert (await sent())["path"] == "/v1/models/text-embedding-004:batchEmbedContents"

    model = await models.GetModel(model_service_pb2.GetModelRequest(name=MODEL))
    assert model.name == MODEL
    assert (await sent())["path"] == "/v1/models/gemini-2.5-flash"

    listed = await models.ListModels(model_service_pb2.ListModelsRequest(page_size=50))
    assert MODEL in [m.name for m in listed.models]
    upstream = await sent()
    assert upstream["path"] == "/v1/models"
    assert upstream["query"] == {"pageSize": "50"}


async def test_a_request_that_fits_no_v1_binding_is_refused(
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
) -> None:
    bad = generative_service_pb2.GenerateContentRequest(model="gemini-2.5-flash")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generative.GenerateContent(bad)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "models/*" in (caught.value.details() or "")


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
async def test_bad_labels_on_v1_are_rejected_before_upstream(
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    http: aiohttp.ClientSession,
    emulator: EmulatorHandle,
    streaming: bool,
) -> None:
    before = (await emulator_stats(http, emulator))["started"]
    bad = request("hello", {"Team": "search", "env": "prod"})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if streaming:
            async for _ in generative.StreamGenerateContent(bad):
                pass
        else:
            await generative.GenerateContent(bad)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(caught.value)
    assert status is not None
    (detail,) = status.details
    bad_request = error_details_pb2.BadRequest()
    assert detail.Unpack(bad_request)
    assert [v.field for v in bad_request.field_violations] == ["labels[Team]"]
    assert (await emulator_stats(http, emulator))["started"] == before


async def test_v1_generate_calls_are_metered_like_v1beta(
    gateway: Gateway,
    channel: grpc.aio.Channel,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    usage: usage_pb2_grpc.UsageServiceStub,
    run: str,
) -> None:
    labels = {"team": "search", "run": run}
    unary = await generative.GenerateContent(request("meter me", labels))
    chunks = [c async for c in generative.StreamGenerateContent(request("a [[chunks:3]]", labels))]
    v1beta = v1beta_generative_service_pb2_grpc.GenerativeServiceStub(channel)
    beta = await v1beta.GenerateContent(text_request(MODEL, "meter me", labels))

    assert gateway.recorder is not None
    await gateway.recorder.flush()
    answer = await usage.QueryUsage(
        usage_pb2.QueryUsageRequest(
            filter=f'labels.run = "{run}"', group_by=["method", "model", "labels.team", "status"]
        )
    )
    rows = {row.group_values["method"]: row for row in answer.rows}
    assert set(rows) == {"GenerateContent", "StreamGenerateContent"}
    for row in rows.values():
        assert dict(row.group_values)["model"] == MODEL
        assert dict(row.group_values)["labels.team"] == "search"
        assert dict(row.group_values)["status"] == "OK"
    assert rows["GenerateContent"].request_count == 2  # v1 and v1beta alike
    assert rows["StreamGenerateContent"].request_count == 1
    last = chunks[-1].usage_metadata
    assert rows["StreamGenerateContent"].tokens.total == last.total_token_count > 0
    assert rows["GenerateContent"].tokens.total == (
        unary.usage_metadata.total_token_count + beta.usage_metadata.total_token_count
    )
    assert rows["GenerateContent"].tokens.prompt == (
        unary.usage_metadata.prompt_token_count + beta.usage_metadata.prompt_token_count
    )
