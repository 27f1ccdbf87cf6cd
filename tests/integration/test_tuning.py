"""Tuned models and long-running operations through the real gateway and emulator."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2, field_mask_pb2
from google.rpc import code_pb2, error_details_pb2
from grpc_status import rpc_status

from gemini_gateway.client.gateway_client import response_text, text_request
from gemini_gateway.emulator.runner import EmulatorHandle, start_emulator
from gemini_gateway.emulator.settings import EmulatorSettings
from gemini_gateway.generated.gemini.gateway.v1 import operations_pb2 as watch_pb2
from gemini_gateway.generated.gemini.gateway.v1 import operations_pb2_grpc as watch_pb2_grpc
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2_grpc,
    model_service_pb2,
    model_service_pb2_grpc,
    tuned_model_pb2,
)
from gemini_gateway.server.app import Gateway, start_gateway
from gemini_gateway.server.config import Settings

pytestmark = pytest.mark.asyncio(loop_scope="session")

INCREMENT = [(str(n), str(n + 1)) for n in range(1, 8)] + list(
    itertools.pairwise(["one", "two", "three", "four", "five", "six", "seven", "eight"])
)
TUNING_SECONDS = 1.0
_ids = itertools.count()


@pytest.fixture(scope="module")
async def tuning_emulator() -> AsyncIterator[EmulatorHandle]:
    handle = await start_emulator(EmulatorSettings(tuning_seconds=TUNING_SECONDS))
    yield handle
    await handle.close()


@pytest.fixture(scope="module")
async def tuning_gateway(tuning_emulator: EmulatorHandle) -> AsyncIterator[Gateway]:
    gw = await start_gateway(
        Settings(upstream="emulator", upstream_url=tuning_emulator.url, port=0)
    )
    yield gw
    await gw.stop(0)


@pytest.fixture(scope="module")
async def stubs(tuning_gateway: Gateway) -> AsyncIterator[dict]:
    async with grpc.aio.insecure_channel(tuning_gateway.target) as channel:
        yield {
            "models": model_service_pb2_grpc.ModelServiceStub(channel),
            "operations": operations_pb2_grpc.OperationsStub(channel),
            "watch": watch_pb2_grpc.OperationWatchServiceStub(channel),
            "generative": generative_service_pb2_grpc.GenerativeServiceStub(channel),
        }


def increment_model(display_name: str = "Increment", **fields) -> tuned_model_pb2.TunedModel:
    model = tuned_model_pb2.TunedModel(
        display_name=display_name,
        base_model="models/gemini-1.5-flash-001-tuning",
        tuning_task=tuned_model_pb2.TuningTask(
            hyperparameters=tuned_model_pb2.Hyperparameters(epoch_count=3, batch_size=4),
            training_data=tuned_model_pb2.Dataset(
                examples=tuned_model_pb2.TuningExamples(
                    examples=[
                        tuned_model_pb2.TuningExample(text_input=i, output=o) for i, o in INCREMENT
                    ]
                )
            ),
        ),
        **fields,
    )
    return model


async def create(stubs, model: tuned_model_pb2.TunedModel, tuned_model_id: str | None = None):
    request = model_service_pb2.CreateTunedModelRequest(tuned_model=model)
    if tuned_model_id is not None:
        request.tuned_model_id = tuned_model_id
    return await stubs["models"].CreateTunedModel(request)


def metadata_of(operation: operations_pb2.Operation) -> model_service_pb2.CreateTunedModelMetadata:
    metadata = model_service_pb2.CreateTunedModelMetadata()
    assert operation.metadata.Unpack(metadata)
    return metadata


async def test_create_watch_get_generate(stubs) -> None:
    operation = await create(stubs, increment_model(), f"increment-{next(_ids)}")
    start = metadata_of(operation)
    total_steps = -(-len(INCREMENT) * 3 // 4)  # ceil(examples x epochs / batch size)
    assert start.total_steps == total_steps
    assert operation.name.startswith(f"{start.tuned_model}/operations/")
    assert not operation.done

    seen = []
    watch = stubs["watch"].WatchOperation(
        watch_pb2.WatchOperationRequest(
            name=operation.name, poll_interval=duration_pb2.Duration(nanos=100_000_000)
        )
    )
    async for update in watch:
        seen.append(update.operation)
    assert seen[-1].done
    assert all(not op.done for op in seen[:-1])
    steps = [metadata_of(op).completed_steps for op in seen]
    assert steps == sorted(steps) and len(set(steps)) == len(steps) > 2  # pushed on change
    final = metadata_of(seen[-1])
    assert final.completed_steps == total_steps
    assert final.completed_percent == pytest.approx(100)
    losses = [s.mean_loss for s in final.snapshots]
    assert len(losses) == total_steps
    assert losses[-1] < losses[0]

    tuned = tuned_model_pb2.TunedModel()
    assert seen[-1].response.Unpack(tuned)
    assert tuned.state == tuned_model_pb2.TunedModel.State.ACTIVE

    got = await stubs["models"].GetTunedModel(
        model_service_pb2.GetTunedModelRequest(name=start.tuned_model)
    )
    assert got.state == tuned_model_pb2.TunedModel.State.ACTIVE
    assert len(got.tuning_task.snapshots) == total_steps
    assert got.tuning_task.hyperparameters.epoch_count == 3

    answer = await stubs["generative"].GenerateContent(text_request(start.tuned_model, "seven"))
    assert response_text(answer).strip() == "eight"
    streamed = [
        response_text(chunk)
        async for chunk in stubs["generative"].StreamGenerateContent(
            text_request(start.tuned_model, "3")
        )
    ]
    assert "".join(streamed).strip() == "4"


async def test_wait_operation_polls_until_done_or_timeout(stubs) -> None:
    operation = await create(stubs, increment_model(), f"waited-{next(_ids)}")
    started = time.perf_counter()
    early = await stubs["operations"].WaitOperation(
        operations_pb2.WaitOperationRequest(
            name=operation.name, timeout=duration_pb2.Duration(nanos=200_000_000)
        )
    )
    assert not early.done  # the latest state, returned at the request's timeout
    assert time.perf_counter() - started < TUNING_SECONDS
    done = await stubs["operations"].WaitOperation(
        operations_pb2.WaitOperationRequest(name=operation.name), timeout=15
    )
    assert done.done
    assert done.HasField("response")


async def test_get_and_list_operations(stubs) -> None:
    operation = await create(stubs, increment_model(), f"ops-{next(_ids)}")
    got = await stubs["operations"].GetOperation(
        operations_pb2.GetOperationRequest(name=operation.name)
    )
    assert got.name == operation.name
    owner = metadata_of(operation).tuned_model
    listed = await stubs["operations"].ListOperations(
        operations_pb2.ListOperationsRequest(name=owner)
    )
    assert [op.name for op in listed.operations] == [operation.name]


async def test_list_pages_and_filter(stubs) -> None:
    tag = f"zebra{next(_ids)}"
    for index in range(3):
        await create(stubs, increment_model(f"Paged {tag} {index}"))
    await create(stubs, increment_model("Unrelated", description=f"mentions {tag} too"))
    await create(stubs, increment_model("Other"))

    names, token = [], ""
    while True:
        page = await stubs["models"].ListTunedModels(
            model_service_pb2.ListTunedModelsRequest(page_size=2, page_token=token, filter=tag)
        )
        assert len(page.tuned_models) <= 2
        names += [m.display_name for m in page.tuned_models]
        token = page.next_page_token
        if not token:
            break
    assert sorted(names) == sorted(
        [f"Paged {tag} 0", f"Paged {tag} 1", f"Paged {tag} 2", "Unrelated"]
    )


async def test_display_name_gives_the_id(stubs) -> None:
    operation = await create(stubs, increment_model("Sentence Translator"))
    name = metadata_of(operation).tuned_model
    assert name.startswith("tunedModels/sentence-translator-")
    assert len(name.rsplit("-", 1)[1]) == 5


async def test_update_with_mask(stubs) -> None:
    operation = await create(stubs, increment_model("Before"), f"upd-{next(_ids)}")
    name = metadata_of(operation).tuned_model
    updated = await stubs["models"].UpdateTunedModel(
        model_service_pb2.UpdateTunedModelRequest(
            tuned_model=tuned_model_pb2.TunedModel(
                name=name, display_name="After", description="ignored: not in mask"
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        )
    )
    assert updated.display_name == "After"
    assert updated.description == ""
    got = await stubs["models"].GetTunedModel(model_service_pb2.GetTunedModelRequest(name=name))
    assert got.display_name == "After"


async def test_delete_then_get_is_not_found(stubs) -> None:
    operation = await create(stubs, increment_model(), f"gone-{next(_ids)}")
    name = metadata_of(operation).tuned_model
    await stubs["models"].DeleteTunedModel(model_service_pb2.DeleteTunedModelRequest(name=name))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stubs["models"].GetTunedModel(model_service_pb2.GetTunedModelRequest(name=name))
    assert info.value.code() is grpc.StatusCode.NOT_FOUND


async def test_cancel_ends_the_operation_cancelled(stubs) -> None:
    operation = await create(stubs, increment_model(), f"cancel-{next(_ids)}")
    await stubs["operations"].CancelOperation(
        operations_pb2.CancelOperationRequest(name=operation.name)
    )
    after = await stubs["operations"].GetOperation(
        operations_pb2.GetOperationRequest(name=operation.name)
    )
    assert after.done
    assert after.error.code == code_pb2.CANCELLED


async def test_failed_tuning_surfaces_as_operation_error(stubs) -> None:
    model = increment_model("Doomed", description="[[fault:tuning_failed]]")
    operation = await create(stubs, model, f"doomed-{next(_ids)}")
    done = await stubs["operations"].WaitOperation(
        operations_pb2.WaitOperationRequest(name=operation.name), timeout=15
    )
    assert done.done
    assert done.error.code != code_pb2.OK
    assert done.error.message
    got = await stubs["models"].GetTunedModel(
        model_service_pb2.GetTunedModelRequest(name=metadata_of(operation).tuned_model)
    )
    assert got.state == tuned_model_pb2.TunedModel.State.FAILED


async def test_watch_unknown_operation_is_not_found(stubs) -> None:
    call = stubs["watch"].WatchOperation(
        watch_pb2.WatchOperationRequest(name="tunedModels/nope/operations/none")
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            pass
    assert info.value.code() is grpc.StatusCode.NOT_FOUND


def _without_examples() -> tuned_model_pb2.TunedModel:
    model = increment_model()
    model.tuning_task.training_data.examples.ClearField("examples")
    return model


def _example_without_output() -> tuned_model_pb2.TunedModel:
    model = increment_model()
    model.tuning_task.training_data.examples.examples.add(text_input="9")
    return model


def _example_without_input() -> tuned_model_pb2.TunedModel:
    model = increment_model()
    model.tuning_task.training_data.examples.examples.add(output="10")
    return model


def _with_hyperparameters(**values) -> tuned_model_pb2.TunedModel:
    model = increment_model()
    model.tuning_task.hyperparameters.CopyFrom(tuned_model_pb2.Hyperparameters(**values))
    return model


def _without_source() -> tuned_model_pb2.TunedModel:
    model = increment_model()
    model.ClearField("base_model")
    return model


EXAMPLES = "tuned_model.tuning_task.training_data.examples.examples"
HYPER = "tuned_model.tuning_task.hyperparameters"


@pytest.mark.parametrize(
    ("model", "tuned_model_id", "fields"),
    [
        (increment_model(), "Bad_Id", ["tuned_model_id"]),
        (increment_model(), "x" * 41, ["tuned_model_id"]),
        (increment_model(), "ends-with-dash-", ["tuned_model_id"]),
        (increment_model("x" * 41), None, ["tuned_model.display_name"]),
        (_without_examples(), None, [EXAMPLES]),
        (_example_without_output(), None, [f"{EXAMPLES}[{len(INCREMENT)}].output"]),
        (_example_without_input(), None, [f"{EXAMPLES}[{len(INCREMENT)}].text_input"]),
        (_with_hyperparameters(learning_rate=-0.1), None, [f"{HYPER}.learning_rate"]),
        (
            _with_hyperparameters(learning_rate_multiplier=0), None,
            [f"{HYPER}.learning_rate_multiplier"],
        ),
        (
            _with_hyperparameters(epoch_count=0, batch_size=-2), None,
            [f"{HYPER}.epoch_count", f"{HYPER}.batch_size"],
        ),
        (increment_model(temperature=2.5), None, ["tuned_model.temperature"]),
        (increment_model(top_p=1.5), None, ["tuned_model.top_p"]),
        (increment_model(top_k=-1), None, ["tuned_model.top_k"]),
        (_without_source(), None, ["tuned_model.base_model"]),
    ],
)  # fmt: skip
async def test_create_validation(
    stubs, tuning_emulator, http, model, tuned_model_id, fields
) -> None:
    # A description no other request carries: an upstream request with it would be this one.
    marker = f"unforwarded-create-{next(_ids)}"
    marked = tuned_model_pb2.TunedModel()
    marked.CopyFrom(model)
    marked.description = marker
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await create(stubs, marked, tuned_model_id)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _violated_fields(info.value) == fields
    assert await _upstream_requests_with(http, tuning_emulator, marker) == []  # never forwarded


@pytest.mark.parametrize(
    ("mask", "model_fields", "fields"),
    [
        ([], {"display_name": "x"}, ["update_mask"]),
        (["state"], {}, ["update_mask"]),
        (["tuning_task", "displayName"], {"display_name": "ok"}, ["update_mask"]),
        (["temperature"], {"temperature": -1.0}, ["tuned_model.temperature"]),
        (["display_name"], {"display_name": "y" * 41}, ["tuned_model.display_name"]),
    ],
)
async def test_update_validation(stubs, tuning_emulator, http, mask, model_fields, fields) -> None:
    # The name is in the upstream path: an upstream request with it would be this one.
    marker = f"unforwarded-update-{next(_ids)}"
    request = model_service_pb2.UpdateTunedModelRequest(
        tuned_model=tuned_model_pb2.TunedModel(name=f"tunedModels/{marker}", **model_fields),
        update_mask=field_mask_pb2.FieldMask(paths=mask),
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stubs["models"].UpdateTunedModel(request)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _violated_fields(info.value) == fields
    assert await _upstream_requests_with(http, tuning_emulator, marker) == []  # never forwarded


async def test_forwarded_request_is_found_by_its_marker(stubs, tuning_emulator, http) -> None:
    # The check the validation tests rely on does see a request that was forwarded.
    marker = f"forwarded-{next(_ids)}"
    await create(stubs, increment_model(description=marker))
    found = await _upstream_requests_with(http, tuning_emulator, marker)
    assert [(e["method"], e["path"]) for e in found] == [("POST", "/v1beta/tunedModels")]


def _violated_fields(exc: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(exc)
    bad_request = error_details_pb2.BadRequest()
    assert status is not None and status.details[0].Unpack(bad_request)
    return [violation.field for violation in bad_request.field_violations]


async def _upstream_requests_with(http, emulator: EmulatorHandle, marker: str) -> list[dict]:
    """The emulator's logged requests whose path, query or body mention `marker`.

    Found by content, not counted: the log keeps only the latest 200 requests, so once it is
    full a count stays the same even when a request arrives. The newest entries are always
    kept, so a request this test caused would be there.
    """
    await asyncio.sleep(0)
    async with http.get(f"{emulator.url}/_emulator/requests") as response:
        logged = await response.json()
    return [
        entry
        for entry in logged
        if marker in json.dumps([entry["path"], entry["query"], entry["body"]])
    ]


async def test_official_client_create_tuned_model_result(tuning_gateway) -> None:
    script = Path(__file__).with_name("official_client_script.py")
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), tuning_gateway.target, "tune",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=90)
    assert process.returncode == 0, stderr.decode()
    report = json.loads(stdout)
    steps = -(-8 * 2 // 4)
    assert report["state"] == "ACTIVE"
    assert report["name"].startswith("tunedModels/official-increment-")
    assert report["operation"].startswith(report["name"] + "/operations/")
    assert report["snapshots"] == steps
    assert report["metadata_type"] == "CreateTunedModelMetadata"
    assert report["metadata_total_steps"] == report["metadata_snapshots"] == steps
    assert report["last_loss"] is not None


async def test_wait_operation_answers_before_the_call_deadline(stubs) -> None:
    operation = await create(stubs, increment_model(), f"deadline-{next(_ids)}")
    latest = await stubs["operations"].WaitOperation(
        operations_pb2.WaitOperationRequest(name=operation.name), timeout=0.4
    )
    assert latest.name == operation.name
    assert not latest.done  # the latest state, sent before the 0.4 s deadline ran out


async def test_batch_operations_are_forwarded_by_their_rules(stubs, tuning_emulator, http) -> None:
    ops = stubs["operations"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await ops.DeleteOperation(operations_pb2.DeleteOperationRequest(name="batches/b1"))
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    async with http.get(f"{tuning_emulator.url}/_emulator/requests") as response:
        seen = (await response.json())[-1]
    assert (seen["method"], seen["path"]) == ("DELETE", "/v1beta/batches/b1")
    # No DeleteOperation binding covers tuning operations: refused before any upstream call.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await ops.DeleteOperation(
            operations_pb2.DeleteOperationRequest(name="tunedModels/x/operations/y")
        )
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "batches/*" in info.value.details()
