"""Calls through the real gateway to the real emulator: unary, streaming, models, labels."""

from __future__ import annotations

import itertools
import time

import grpc
import pytest

from gemini_gateway.client.gateway_client import response_text, text_request
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    content_pb2,
    generative_service_pb2,
    model_service_pb2,
)
from tests.integration.conftest import last_upstream_request

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_generate_content_round_trip(generative, emulator, http) -> None:
    request = text_request("models/gemini-2.5-flash", "What is gRPC?", labels={"team": "search"})
    response = await generative.GenerateContent(request)
    text = response_text(response)
    assert text.startswith("Echo: What is gRPC?")
    candidate = response.candidates[0]
    assert candidate.finish_reason == candidate.FinishReason.STOP
    assert candidate.content.role == "model"
    usage = response.usage_metadata
    assert usage.prompt_token_count > 0
    assert usage.thoughts_token_count > 0  # gemini-2.5-flash thinks by default
    assert usage.total_token_count == (
        usage.prompt_token_count + usage.candidates_token_count + usage.thoughts_token_count
    )
    assert response.model_version
    upstream = await last_upstream_request(http, emulator)
    assert upstream["method"] == "POST"
    assert upstream["path"] == "/v1beta/models/gemini-2.5-flash:generateContent"
    # Labels (a gateway extension field) are forwarded in the JSON body.
    assert upstream["body"]["labels"] == {"team": "search"}
    assert "model" not in upstream["body"]


async def test_same_prompt_same_answer_as_direct_rest(generative, emulator, http) -> None:
    request = text_request("gemini-2.5-flash", "determinism")
    via_gateway = response_text(await generative.GenerateContent(request))
    body = {"contents": [{"role": "user", "parts": [{"text": "determinism"}]}]}
    url = f"{emulator.url}/v1beta/models/gemini-2.5-flash:generateContent"
    async with http.post(url, json=body) as response:
        direct = (await response.json())["candidates"][0]["content"]["parts"][0]["text"]
    assert via_gateway == direct


async def test_stream_forwards_every_chunk_and_usage_on_last(generative) -> None:
    request = text_request("gemini-2.5-flash", "stream please [[chunks:5]]")
    chunks = [chunk async for chunk in generative.StreamGenerateContent(request)]
    assert len(chunks) == 5
    assert "".join(response_text(c) for c in chunks).startswith("Echo: stream please")
    assert chunks[-1].candidates[0].finish_reason == content_finish_stop()
    assert chunks[-1].usage_metadata.total_token_count > 0
    assert all(c.candidates[0].finish_reason == 0 for c in chunks[:-1])


def content_finish_stop() -> int:
    return generative_service_pb2.Candidate.FinishReason.STOP


async def test_stream_delivers_each_chunk_before_the_next_is_produced(generative) -> None:
    # The emulator sends a chunk every 300 ms. Chunk k is produced at about k*300 ms, so
    # it must reach the client before (k+1)*300 ms, and arrivals must be spaced, not bunched.
    delay = 0.3
    request = text_request("gemini-2.5-flash", "slow [[chunks:4]] [[chunk_delay_ms:300]]")
    start = time.perf_counter()
    arrivals = []
    async for _chunk in generative.StreamGenerateContent(request):
        arrivals.append(time.perf_counter() - start)
    assert len(arrivals) == 4
    for k, arrival in enumerate(arrivals):
        assert arrival < (k + 1) * delay - 0.05, f"chunk {k} arrived at {arrival:.3f}s"
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) > delay * 0.6, f"chunks bunched together: gaps {gaps}"


async def test_count_tokens_matches_usage(generative) -> None:
    prompt = "count these few words please"
    counted = await generative.CountTokens(
        generative_service_pb2.CountTokensRequest(
            model="models/gemini-2.5-flash",
            contents=[content_pb2.Content(role="user", parts=[content_pb2.Part(text=prompt)])],
        )
    )
    response = await generative.GenerateContent(text_request("gemini-2.5-flash", prompt))
    assert counted.total_tokens == response.usage_metadata.prompt_token_count > 0


async def test_embed_and_batch_embed(generative) -> None:
    content = content_pb2.Content(parts=[content_pb2.Part(text="embed me")])
    single = await generative.EmbedContent(
        generative_service_pb2.EmbedContentRequest(
            model="models/gemini-embedding-001", content=content, output_dimensionality=64
        )
    )
    assert len(single.embedding.values) == 64
    batch = await generative.BatchEmbedContents(
        generative_service_pb2.BatchEmbedContentsRequest(
            model="models/gemini-embedding-001",
            requests=[
                generative_service_pb2.EmbedContentRequest(
                    model="models/gemini-embedding-001", content=content, output_dimensionality=64
                )
            ]
            * 3,
        )
    )
    assert len(batch.embeddings) == 3
    assert list(batch.embeddings[0].values) == pytest.approx(list(single.embedding.values))


async def test_list_models_pages_and_get_model(models) -> None:
    first = await models.ListModels(model_service_pb2.ListModelsRequest(page_size=2))
    assert len(first.models) == 2
    assert first.next_page_token
    second = await models.ListModels(
        model_service_pb2.ListModelsRequest(page_size=2, page_token=first.next_page_token)
    )
    assert {m.name for m in first.models}.isdisjoint({m.name for m in second.models})
    model = await models.GetModel(model_service_pb2.GetModelRequest(name="models/gemini-2.5-flash"))
    assert model.name == "models/gemini-2.5-flash"
    assert "generateContent" in model.supported_generation_methods
    assert model.input_token_limit > 0


async def test_function_call_and_json_mode_round_trip(generative) -> None:
    weather = content_pb2.FunctionDeclaration(
        name="get_weather",
        description="Weather for a city",
        parameters=content_pb2.Schema(
            type=content_pb2.Type.OBJECT,
            properties={"city": content_pb2.Schema(type=content_pb2.Type.STRING)},
            required=["city"],
        ),
    )
    request = text_request("gemini-2.5-flash", "call get_weather for Paris")
    request.tools.add(function_declarations=[weather])
    response = await generative.GenerateContent(request)
    call = response.candidates[0].content.parts[0].function_call
    assert call.name == "get_weather"
    assert "city" in call.args.fields

    request = text_request("gemini-2.5-flash", "a person")
    request.generation_config.response_mime_type = "application/json"
    request.generation_config.response_schema.CopyFrom(
        content_pb2.Schema(
            type=content_pb2.Type.OBJECT,
            properties={
                "name": content_pb2.Schema(type=content_pb2.Type.STRING),
                "age": content_pb2.Schema(type=content_pb2.Type.INTEGER),
            },
            required=["name", "age"],
        )
    )
    import json

    value = json.loads(response_text(await generative.GenerateContent(request)))
    assert isinstance(value["name"], str)
    assert isinstance(value["age"], int)


async def test_response_json_schema_uses_the_sdk_json_name(generative, emulator, http) -> None:
    request = text_request("gemini-2.5-flash", "json please")
    request.generation_config.response_mime_type = "application/json"
    request.generation_config.response_json_schema_ordered.struct_value.update(
        {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    )
    await generative.GenerateContent(request)
    body = (await last_upstream_request(http, emulator))["body"]
    assert "responseJsonSchema" in body["generationConfig"]


async def test_invalid_model_name_is_rejected_before_upstream(generative) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await generative.GenerateContent(text_request("tunedModels/a/b", "hi"))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "models/*" in info.value.details()
