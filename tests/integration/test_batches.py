"""The Batch API through the gateway, over gRPC with the generated stubs, against the emulator.

The emulator names the batch messages `...v1main.*` as Google does; the gateway answers them
as the v1beta messages of its protos (server/any_types.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import descriptor_pool, duration_pb2, struct_pb2

from gemini_gateway.client.gateway_client import response_text, text_request
from gemini_gateway.emulator.batches import BATCHES_KEY
from gemini_gateway.emulator.runner import EmulatorHandle, start_emulator
from gemini_gateway.emulator.settings import EmulatorSettings
from gemini_gateway.generated.gemini.gateway.v1 import operations_pb2 as watch_pb2
from gemini_gateway.generated.gemini.gateway.v1 import operations_pb2_grpc as watch_pb2_grpc
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2 as gs,
)
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2_grpc,
)
from gemini_gateway.server.any_types import (
    V1BETA_TWINS,
    mentions_internal_types,
    normalize_any_types,
    public_type_url,
)
from gemini_gateway.server.app import Gateway, start_gateway
from gemini_gateway.server.config import Settings

FLASH = "models/gemini-2.5-flash"
V1BETA = "type.googleapis.com/google.ai.generativelanguage.v1beta."
SHORT = 0.3  # seconds a batch takes
LONG = 1000.0  # seconds: a batch that does not end during a test


@pytest.fixture(scope="module")
async def batch_emulator() -> AsyncIterator[EmulatorHandle]:
    handle = await start_emulator(EmulatorSettings())
    yield handle
    await handle.close()


@pytest.fixture(scope="module")
async def batch_gateway(batch_emulator: EmulatorHandle) -> AsyncIterator[Gateway]:
    gw = await start_gateway(Settings(upstream="emulator", upstream_url=batch_emulator.url, port=0))
    yield gw
    await gw.stop(0)


@pytest.fixture(scope="module")
async def stubs(batch_gateway: Gateway) -> AsyncIterator[dict[str, Any]]:
    async with grpc.aio.insecure_channel(batch_gateway.target) as channel:
        yield {
            "generative": generative_service_pb2_grpc.GenerativeServiceStub(channel),
            "operations": operations_pb2_grpc.OperationsStub(channel),
            "watch": watch_pb2_grpc.OperationWatchServiceStub(channel),
        }


def duration(emulator: EmulatorHandle, seconds: float) -> None:
    emulator.app[BATCHES_KEY].seconds = seconds


def batch_request(*prompts: str, model: str = FLASH) -> gs.BatchGenerateContentRequest:
    requests = []
    for index, prompt in enumerate(prompts):
        metadata = struct_pb2.Struct()
        metadata.update({"key": f"k{index}"})
        request = text_request(FLASH, prompt)
        request.ClearField("model")  # the batch's model applies
        requests.append(gs.InlinedRequest(request=request, metadata=metadata))
    return gs.BatchGenerateContentRequest(
        batch=gs.GenerateContentBatch(
            model=model,
            display_name="gateway batch",
            input_config=gs.InputConfig(requests=gs.InlinedRequests(requests=requests)),
        )
    )


def batch_of(operation: operations_pb2.Operation) -> gs.GenerateContentBatch:
    assert operation.metadata.type_url == V1BETA + "GenerateContentBatch"
    batch = gs.GenerateContentBatch()
    assert operation.metadata.Unpack(batch)
    return batch


def output_of(operation: operations_pb2.Operation) -> gs.GenerateContentBatchOutput:
    assert operation.response.type_url == V1BETA + "GenerateContentBatchOutput"
    output = gs.GenerateContentBatchOutput()
    assert operation.response.Unpack(output)
    return output


async def test_batch_runs_to_completion(stubs: dict[str, Any], batch_emulator) -> None:
    duration(batch_emulator, SHORT)
    operation = await stubs["generative"].BatchGenerateContent(batch_request("hello", "world"))
    assert operation.name.startswith("batches/") and not operation.done
    batch = batch_of(operation)
    assert batch.name == operation.name
    assert batch.model == FLASH
    assert batch.display_name == "gateway batch"
    assert batch.state == gs.GenerateContentBatch.BATCH_STATE_PENDING
    assert batch.batch_stats.request_count == 2
    assert batch.batch_stats.pending_request_count == 2
    assert batch.create_time.seconds > 0

    done = await stubs["operations"].WaitOperation(
        operations_pb2.WaitOperationRequest(name=operation.name), timeout=30
    )
    assert done.done and not done.HasField("error")
    final = batch_of(done)
    assert final.state == gs.GenerateContentBatch.BATCH_STATE_SUCCEEDED
    assert final.batch_stats.successful_request_count == 2
    assert final.end_time.seconds > 0
    inlined = output_of(done).inlined_responses.inlined_responses
    assert [entry.metadata["key"] for entry in inlined] == ["k0", "k1"]
    assert final.output == output_of(done)
    for entry, prompt in zip(inlined, ["hello", "world"], strict=True):
        direct = await stubs["generative"].GenerateContent(text_request(FLASH, prompt))
        assert entry.response == direct  # the same answer as a direct call, id and all
        assert response_text(entry.response).startswith(f"Echo: {prompt}")


async def test_get_list_cancel_and_delete(stubs: dict[str, Any], batch_emulator) -> None:
    operations = stubs["operations"]
    duration(batch_emulator, LONG)
    first = await stubs["generative"].BatchGenerateContent(batch_request("a", "b"))
    second = await stubs["generative"].BatchGenerateContent(batch_request("c"))

    got = await operations.GetOperation(operations_pb2.GetOperationRequest(name=first.name))
    assert got.name == first.name and not got.done
    assert batch_of(got).state == gs.GenerateContentBatch.BATCH_STATE_PENDING

    listed = await operations.ListOperations(
        operations_pb2.ListOperationsRequest(name="batches", page_size=1)
    )
    assert [op.name for op in listed.operations] == [second.name]  # newest first
    assert listed.next_page_token
    following = await operations.ListOperations(
        operations_pb2.ListOperationsRequest(
            name="batches", page_size=1, page_token=listed.next_page_token
        )
    )
    assert [op.name for op in following.operations] == [first.name]
    assert batch_of(following.operations[0]).batch_stats.request_count == 2

    await operations.CancelOperation(operations_pb2.CancelOperationRequest(name=first.name))
    cancelled = await operations.WaitOperation(
        operations_pb2.WaitOperationRequest(name=first.name), timeout=30
    )
    assert cancelled.done
    assert cancelled.error.code == grpc.StatusCode.CANCELLED.value[0]
    assert batch_of(cancelled).state == gs.GenerateContentBatch.BATCH_STATE_CANCELLED

    await operations.DeleteOperation(operations_pb2.DeleteOperationRequest(name=second.name))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await operations.GetOperation(operations_pb2.GetOperationRequest(name=second.name))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_watch_streams_the_batch_until_done(stubs: dict[str, Any], batch_emulator) -> None:
    duration(batch_emulator, SHORT)
    operation = await stubs["generative"].BatchGenerateContent(batch_request("x", "y", "z"))
    seen = [
        update.operation
        async for update in stubs["watch"].WatchOperation(
            watch_pb2.WatchOperationRequest(
                name=operation.name, poll_interval=duration_pb2.Duration(nanos=100_000_000)
            ),
            timeout=30,
        )
    ]
    assert seen[-1].done and all(not op.done for op in seen[:-1])
    assert len(output_of(seen[-1]).inlined_responses.inlined_responses) == 3


async def test_a_failed_request_is_an_inlined_error(stubs: dict[str, Any], batch_emulator) -> None:
    duration(batch_emulator, 0)
    operation = await stubs["generative"].BatchGenerateContent(
        batch_request("fine", "slow down [[fault:429]]")
    )
    assert operation.done
    fine, limited = output_of(operation).inlined_responses.inlined_responses
    assert fine.HasField("response")
    assert limited.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "quota" in limited.error.message
    # The error's details (QuotaFailure, Help, RetryInfo) come through as well.
    assert [d.type_url.rsplit(".", 1)[-1] for d in limited.error.details] == [
        "QuotaFailure",
        "Help",
        "RetryInfo",
    ]


@pytest.mark.parametrize(
    ("request_message", "code"),
    [
        (batch_request("a", model="models/gemini-9"), grpc.StatusCode.NOT_FOUND),
        (batch_request(), grpc.StatusCode.INVALID_ARGUMENT),  # no requests
        (
            gs.BatchGenerateContentRequest(batch=gs.GenerateContentBatch(model="tunedModels/x")),
            grpc.StatusCode.INVALID_ARGUMENT,  # not a models/* name: no route
        ),
    ],
)
async def test_bad_batches_are_refused(
    stubs: dict[str, Any], request_message: gs.BatchGenerateContentRequest, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stubs["generative"].BatchGenerateContent(request_message)
    assert caught.value.code() == code


# --- normalize_any_types on its own ---------------------------------------------------------


def test_every_twin_is_a_v1beta_message() -> None:
    pool = descriptor_pool.Default()
    for name in V1BETA_TWINS:
        assert pool.FindMessageTypeByName("google.ai.generativelanguage.v1beta." + name)


def test_type_urls_are_rewritten_where_a_twin_exists() -> None:
    internal = "type.googleapis.com/google.ai.generativelanguage.v1main."
    payload = {
        "name": "batches/x",
        "metadata": {"@type": internal + "GenerateContentBatch", "state": "BATCH_STATE_RUNNING"},
        "list": [{"@type": internal + "EmbedContentBatch", "model": "m", "nested": [1]}],
        "other": {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"},
    }
    assert normalize_any_types(payload) is payload
    assert payload["metadata"] == {
        "@type": V1BETA + "GenerateContentBatch",
        "state": "BATCH_STATE_RUNNING",
    }
    # No v1beta twin: the fields are kept, as a Struct.
    assert payload["list"] == [
        {
            "@type": "type.googleapis.com/google.protobuf.Struct",
            "value": {"model": "m", "nested": [1]},
        }
    ]
    assert payload["other"]["@type"] == "type.googleapis.com/google.rpc.RetryInfo"
    assert public_type_url(internal + "GenerateContentBatchOutput") == (
        V1BETA + "GenerateContentBatchOutput"
    )
    assert public_type_url(V1BETA + "TunedModel") is None
    assert normalize_any_types([1, "two", None]) == [1, "two", None]


def test_only_answers_mentioning_the_internal_package_need_it() -> None:
    assert mentions_internal_types(b'{"@type": "...v1main.GenerateContentBatch"}')
    assert mentions_internal_types('{"@type": "...v1main.GenerateContentBatch"}')
    assert not mentions_internal_types(b'{"candidates": []}')
