"""DatasetService through a real gateway with logging on, the emulator and a real store
(SQLite and PostgreSQL): datasets from logged calls, every export format, a tuning job on a
dataset, and two projects that cannot reach each other's datasets."""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import field_mask_pb2, json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gemini_gateway.client.gateway_client import response_text, text_request
from gemini_gateway.emulator.runner import EmulatorHandle, start_emulator
from gemini_gateway.emulator.settings import EmulatorSettings
from gemini_gateway.generated.gemini.gateway.v1 import datasets_pb2, datasets_pb2_grpc
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2,
    generative_service_pb2_grpc,
    model_service_pb2,
    tuned_model_pb2,
)
from gemini_gateway.server.app import Gateway, start_gateway
from gemini_gateway.server.config import CallerConfig, ProjectConfig, Settings
from gemini_gateway.server.exports import CSV_COLUMNS
from gemini_gateway.server.identity import token_sha256
from gemini_gateway.server.store.logs import list_logs
from tests.store.support import FreshUrl

MODEL = "models/gemini-2.5-flash"
BASE_MODEL = "models/gemini-1.5-flash-001-tuning"
ALPHA, BETA = "alpha-token", "beta-token"
_cases = itertools.count()


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
async def tuning_emulator() -> AsyncIterator[EmulatorHandle]:
    handle = await start_emulator(EmulatorSettings(tuning_seconds=0.3))
    yield handle
    await handle.close()


@pytest.fixture(scope="module")
async def gateway(tuning_emulator: EmulatorHandle, fresh_url: FreshUrl) -> AsyncIterator[Gateway]:
    settings = Settings(
        upstream="emulator",
        upstream_url=tuning_emulator.url,
        port=0,
        store_url=await fresh_url(),
        logging_enabled=True,
        projects={
            "alpha": ProjectConfig(
                callers=[CallerConfig(name="alice", token_sha256=token_sha256(ALPHA))]
            ),
            "beta": ProjectConfig(
                callers=[CallerConfig(name="bob", token_sha256=token_sha256(BETA))]
            ),
        },
    )
    gw = await start_gateway(settings)
    yield gw
    await gw.stop(0)


@pytest.fixture
def datasets(channel: grpc.aio.Channel) -> datasets_pb2_grpc.DatasetServiceStub:
    return datasets_pb2_grpc.DatasetServiceStub(channel)


@pytest.fixture
def operations(channel: grpc.aio.Channel) -> operations_pb2_grpc.OperationsStub:
    return operations_pb2_grpc.OperationsStub(channel)


async def logged_calls(
    gateway: Gateway,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    prompts: Sequence[str],
    *,
    token: str = ALPHA,
    project: str = "alpha",
) -> tuple[str, list[str]]:
    """Make one call per prompt under a fresh `case` label; (the label, their log names)."""
    case = f"case{next(_cases)}"
    for prompt in prompts:
        try:
            await generative.GenerateContent(
                text_request(MODEL, prompt, {"case": case}), metadata=bearer(token)
            )
        except grpc.aio.AioRpcError:
            pass  # failed calls are logged too
    assert gateway.recorder is not None
    await gateway.recorder.flush()
    logs, _ = await list_logs(
        gateway.store, project, filter_text=f'labels.case = "{case}"', page_size=100
    )
    assert len(logs) == len(prompts)
    return case, [f"projects/{project}/logs/{log.id}" for log in logs]


def new_dataset(display_name: str = "Hard cases", **fields) -> datasets_pb2.Dataset:
    return datasets_pb2.Dataset(display_name=display_name, **fields)


async def rpc_error(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def violated_fields(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)
    assert status is not None
    found = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            found += [violation.field for violation in bad_request.field_violations]
    return found


async def export(
    datasets: datasets_pb2_grpc.DatasetServiceStub,
    name: str,
    export_format: datasets_pb2.ExportFormat.ValueType,
    token: str = ALPHA,
) -> tuple[datasets_pb2.ExportDatasetResponse, bytes, dict[str, str]]:
    call = datasets.ExportDataset(
        datasets_pb2.ExportDatasetRequest(name=name, format=export_format), metadata=bearer(token)
    )
    messages = [message async for message in call]
    trailers = {key: value for key, value in (await call.trailing_metadata() or ())}
    first = messages[0]
    assert first.file_name and first.content_type and not first.data
    assert all(not m.file_name and not m.content_type for m in messages[1:])
    return first, b"".join(m.data for m in messages[1:]), trailers


async def test_create_from_names_get_and_list(
    gateway: Gateway,
    datasets: datasets_pb2_grpc.DatasetServiceStub,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
) -> None:
    _, names = await logged_calls(gateway, generative, ["one", "two", "three"])
    created = await datasets.CreateDataset(
        datasets_pb2.CreateDatasetRequest(
            parent="projects/alpha",
            dataset=new_dataset("Picked by hand", description="three calls"),
            log_names=names[:2],
        ),
        metadata=bearer(ALPHA),
    )
    assert created.name.startswith("projects/alpha/datasets/picked-by-hand-")
    assert (created.display_name, created.description, created.log_count) == (
        "Picked by hand", "three calls", 2,
    )  # fmt: skip
    assert created.create_time == created.update_time and created.create_time.seconds > 0

    got = await datasets.GetDataset(
        datasets_pb2.GetDatasetRequest(name=created.name), metadata=bearer(ALPHA)
    )
    assert got == created
    # `projects/-` is the caller's own project.
    own = created.name.replace("projects/alpha/", "projects/-/")
    assert (
        await datasets.GetDataset(datasets_pb2.GetDatasetRequest(name=own), metadata=bearer(ALPHA))
        == created
    )

    later = await datasets.CreateDataset(
        datasets_pb2.CreateDatasetRequest(
            dataset=new_dataset("Named"), dataset_id=f"named-{next(_cases)}", log_names=names[2:]
        ),
        metadata=bearer(ALPHA),
    )
    listed, token = [], ""
    while True:
        page = await datasets.ListDatasets(
            datasets_pb2.ListDatasetsRequest(parent="projects/-", page_size=1, page_token=token),
            metadata=bearer(ALPHA),
        )
        listed += [dataset.name for dataset in page.datasets]
        token = page.next_page_token
        if not token:
            break
    assert listed.index(later.name) < listed.index(created.name)  # newest first

    taken = await rpc_error(
        datasets.CreateDataset(
            datasets_pb2.CreateDatasetRequest(
                dataset=new_dataset(), dataset_id=later.name.rsplit("/", 1)[1]
            ),
            metadata=bearer(ALPHA),
        )
    )
    assert taken.code() is grpc.StatusCode.ALREADY_EXISTS


async def test_create_from_filter_then_add_and_remove(
    gateway: Gateway,
    datasets: datasets_pb2_grpc.DatasetServiceStub,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
) -> None:
    case, names = await logged_calls(gateway, generative, ["a", "b", "c", "d"])
    other_case, others = await logged_calls(gateway, generative, ["e", "f"])
    created = await datasets.CreateDataset(
        datasets_pb2.CreateDatasetRequest(
            dataset=new_dataset("By filter"), filter=f'labels.case = "{case}"'
        ),
        metadata=bearer(ALPHA),
    )
    assert created.log_count == 4

    added = await datasets.AddLogs(
        datasets_pb2.AddLogsRequest(dataset=created.name, log_names=[names[0], others[0]]),
        metadata=bearer(ALPHA),
    )
    assert (added.added_count, added.dataset.log_count) == (1, 5)
    assert added.dataset.update_time.ToDatetime() > created.update_time.ToDatetime()
    added = await datasets.AddLogs(
        datasets_pb2.AddLogsRequest(dataset=created.name, filter=f'labels.case = "{other_case}"'),
        metadata=bearer(ALPHA),
    )
    assert (added.added_count, added.dataset.log_count) == (1, 6)

    removed = await datasets.RemoveLogs(
        datasets_pb2.RemoveLogsRequest(dataset=created.name, log_names=names[:2]),
        metadata=bearer(ALPHA),
    )
    assert (removed.removed_count, removed.dataset.log_count) == (2, 4)
    removed = await datasets.RemoveLogs(
        datasets_pb2.RemoveLogsRequest(
            dataset=created.name, filter=f'labels.case = "{other_case}"'
        ),
        metadata=bearer(ALPHA),
    )
    assert (removed.removed_count, removed.dataset.log_count) == (2, 2)

    missing = names[0].rsplit("/", 1)[0] + "/" + "0" * 24
    unknown = await rpc_error(
        datasets.AddLogs(
            datasets_pb2.AddLogsRequest(dataset=created.name, log_names=[names[0], missing]),
            metadata=bearer(ALPHA),
        )
    )
    assert unknown.code() is grpc.StatusCode.NOT_FOUND
    assert missing in (unknown.details() or "")


async def test_update_and_delete(
    gateway: Gateway,
    datasets: datasets_pb2_grpc.DatasetServiceStub,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
) -> None:
    case, names = await logged_calls(gateway, generative, ["kept"])
    created = await datasets.CreateDataset(
        datasets_pb2.CreateDatasetRequest(
            dataset=new_dataset("Before", description="first"), log_names=names
        ),
        metadata=bearer(ALPHA),
    )
    renamed = await datasets.UpdateDataset(
        datasets_pb2.UpdateDatasetRequest(
            dataset=datasets_pb2.Dataset(name=created.name, display_name="After", description="x"),
            update_mask=field_mask_pb2.FieldMask(paths=["displayName"]),
        ),
        metadata=bearer(ALPHA),
    )
    assert (renamed.display_name, renamed.description) == ("After", "first")
    both = await datasets.UpdateDataset(
        datasets_pb2.UpdateDatasetRequest(
            dataset=datasets_pb2.Dataset(name=created.name, display_name="Both", description="")
        ),
        metadata=bearer(ALPHA),
    )
    assert (both.display_name, both.description) == ("Both", "")
    bad_mask = await rpc_error(
        datasets.UpdateDataset(
            datasets_pb2.UpdateDatasetRequest(
                dataset=datasets_pb2.Dataset(name=created.name, display_name="x"),
                update_mask=field_mask_pb2.FieldMask(paths=["log_count"]),
            ),
            metadata=bearer(ALPHA),
        )
    )
    assert bad_mask.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(bad_mask) == ["update_mask"]

    await datasets.DeleteDataset(
        datasets_pb2.DeleteDatasetRequest(name=created.name), metadata=bearer(ALPHA)
    )
    gone = await rpc_error(
        datasets.GetDataset(
            datasets_pb2.GetDatasetRequest(name=created.name), metadata=bearer(ALPHA)
        )
    )
    assert gone.code() is grpc.StatusCode.NOT_FOUND
    logs, _ = await list_logs(gateway.store, "alpha", filter_text=f'labels.case = "{case}"')
    assert len(logs) == 1  # the logs stay


async def test_every_export_format(
    gateway: Gateway,
    tuning_emulator: EmulatorHandle,
    datasets: datasets_pb2_grpc.DatasetServiceStub,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    operations: operations_pb2_grpc.OperationsStub,
) -> None:
    prompts = ['Say, "hello"\nover two lines', "Name a colour", "[[fault:500]] this fails"]
    case, names = await logged_calls(gateway, generative, prompts)
    dataset_id = f"export-{next(_cases)}"
    created = await datasets.CreateDataset(
        datasets_pb2.CreateDatasetRequest(
            dataset=new_dataset("Export me"), dataset_id=dataset_id, log_names=names
        ),
        metadata=bearer(ALPHA),
    )
    logs, _ = await list_logs(
        gateway.store, "alpha", filter_text=f'labels.case = "{case}"', full=True
    )
    by_name = {f"projects/alpha/logs/{log.id}": log for log in logs}
    answers = {
        log.id: response_text(
            json_format.Parse(log.response_json, generative_service_pb2.GenerateContentResponse())
        )
        for log in logs
        if log.status == "OK"
    }
    assert len(answers) == 2

    first, data, _ = await export(datasets, created.name, datasets_pb2.EXPORT_FORMAT_CSV)
    assert (first.file_name, first.content_type) == (f"{dataset_id}.csv", "text/csv")
    rows = list(csv.DictReader(io.StringIO(data.decode(), newline="")))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [row["name"] for row in rows] == names  # newest first, as ListLogs
    assert sorted(row["prompt"] for row in rows) == sorted(prompts)
    for row in rows:
        log = by_name[row["name"]]
        assert row["status"] == log.status
        assert json.loads(row["labels"])["case"] == case
        assert row["response"] == answers.get(log.id, "")

    first, data, _ = await export(datasets, created.name, datasets_pb2.EXPORT_FORMAT_JSONL)
    assert (first.file_name, first.content_type) == (f"{dataset_id}.jsonl", "application/jsonl")
    lines = [json.loads(line) for line in data.decode().splitlines()]
    assert [line["name"] for line in lines] == names
    for line in lines:
        log = by_name[line["name"]]
        assert line["request"] == json.loads(log.request_json)
        assert line["status"] == log.status
        request = json_format.ParseDict(
            line["request"], generative_service_pb2.GenerateContentRequest()
        )
        assert request.model == MODEL

    first, data, trailers = await export(datasets, created.name, datasets_pb2.EXPORT_FORMAT_BATCH)
    assert first.file_name == f"{dataset_id}-batch.jsonl"
    lines = [json.loads(line) for line in data.decode().splitlines()]
    assert [f"projects/alpha/logs/{line['key']}" for line in lines] == names
    assert trailers["gateway-export-rows"] == "3"

    first, data, trailers = await export(datasets, created.name, datasets_pb2.EXPORT_FORMAT_TUNING)
    assert first.file_name == f"{dataset_id}-tuning.jsonl"
    lines = [json.loads(line) for line in data.decode().splitlines()]
    assert (trailers["gateway-export-rows"], trailers["gateway-export-skipped"]) == ("2", "1")
    assert sorted(line["output"] for line in lines) == sorted(answers.values())
    assert {line["text_input"] for line in lines} == set(prompts[:2])

    unspecified = await rpc_error(
        datasets.ExportDataset(
            datasets_pb2.ExportDatasetRequest(name=created.name), metadata=bearer(ALPHA)
        ).read()
    )
    assert unspecified.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(unspecified) == ["format"]


async def test_tuned_model_from_dataset(
    gateway: Gateway,
    datasets: datasets_pb2_grpc.DatasetServiceStub,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    operations: operations_pb2_grpc.OperationsStub,
) -> None:
    prompts = ["What is two plus two?", "Name a planet", "[[fault:429]] too many"]
    case, names = await logged_calls(gateway, generative, prompts)
    logs, _ = await list_logs(
        gateway.store, "alpha", filter_text=f'labels.case = "{case}"', full=True
    )
    examples = {
        json_format.Parse(log.request_json, generative_service_pb2.GenerateContentRequest())
        .contents[-1]
        .parts[0]
        .text: response_text(
            json_format.Parse(log.response_json, generative_service_pb2.GenerateContentResponse())
        )
        for log in logs
        if log.status == "OK"
    }
    assert len(examples) == 2
    created = await datasets.CreateDataset(
        datasets_pb2.CreateDatasetRequest(dataset=new_dataset("To tune"), log_names=names),
        metadata=bearer(ALPHA),
    )
    tuned_model_id = f"from-dataset-{next(_cases)}"
    operation = await datasets.CreateTunedModelFromDataset(
        datasets_pb2.CreateTunedModelFromDatasetRequest(
            dataset=created.name,
            tuned_model=tuned_model_pb2.TunedModel(
                display_name="Tuned on logs",
                base_model=BASE_MODEL,
                tuning_task=tuned_model_pb2.TuningTask(
                    hyperparameters=tuned_model_pb2.Hyperparameters(epoch_count=2, batch_size=1)
                ),
            ),
            tuned_model_id=tuned_model_id,
        ),
        metadata=bearer(ALPHA),
    )
    metadata = model_service_pb2.CreateTunedModelMetadata()
    assert operation.metadata.Unpack(metadata)
    assert metadata.tuned_model == f"tunedModels/{tuned_model_id}"
    assert metadata.total_steps == 4  # 2 usable examples x 2 epochs / batch size 1
    done = await operations.WaitOperation(
        operations_pb2.WaitOperationRequest(name=operation.name), metadata=bearer(ALPHA), timeout=20
    )
    assert done.done and not done.HasField("error")
    tuned = tuned_model_pb2.TunedModel()
    assert done.response.Unpack(tuned)
    assert tuned.state == tuned_model_pb2.TunedModel.State.ACTIVE
    assert (tuned.display_name, tuned.base_model) == ("Tuned on logs", BASE_MODEL)
    assert tuned.tuning_task.hyperparameters.epoch_count == 2
    # The tuned model answers a logged prompt with the logged response.
    for prompt, answer in examples.items():
        reply = await generative.GenerateContent(
            text_request(metadata.tuned_model, prompt), metadata=bearer(ALPHA)
        )
        assert response_text(reply) == answer


async def test_tuning_needs_a_usable_example(
    gateway: Gateway,
    datasets: datasets_pb2_grpc.DatasetServiceStub,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
) -> None:
    _, names = await logged_calls(gateway, generative, ["[[fault:503]] nothing usable"])
    for log_names in (names, []):
        created = await datasets.CreateDataset(
            datasets_pb2.CreateDatasetRequest(dataset=new_dataset("Unusable"), log_names=log_names),
            metadata=bearer(ALPHA),
        )
        refused = await rpc_error(
            datasets.CreateTunedModelFromDataset(
                datasets_pb2.CreateTunedModelFromDatasetRequest(
                    dataset=created.name,
                    tuned_model=tuned_model_pb2.TunedModel(base_model=BASE_MODEL),
                ),
                metadata=bearer(ALPHA),
            )
        )
        assert refused.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "no log usable" in (refused.details() or "")
    missing_model = await rpc_error(
        datasets.CreateTunedModelFromDataset(
            datasets_pb2.CreateTunedModelFromDatasetRequest(dataset=created.name),
            metadata=bearer(ALPHA),
        )
    )
    assert violated_fields(missing_model) == ["tuned_model"]


async def test_projects_cannot_reach_each_others_datasets(
    gateway: Gateway,
    datasets: datasets_pb2_grpc.DatasetServiceStub,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
) -> None:
    alpha_case, alpha_logs = await logged_calls(gateway, generative, ["alpha's call"])
    _, beta_logs = await logged_calls(
        gateway, generative, ["beta's call"], token=BETA, project="beta"
    )
    secret = await datasets.CreateDataset(
        datasets_pb2.CreateDatasetRequest(dataset=new_dataset("Alpha only"), log_names=alpha_logs),
        metadata=bearer(ALPHA),
    )
    dataset_id = secret.name.rsplit("/", 1)[1]
    as_beta = bearer(BETA)

    denied = [
        datasets.GetDataset(datasets_pb2.GetDatasetRequest(name=secret.name), metadata=as_beta),
        datasets.ListDatasets(
            datasets_pb2.ListDatasetsRequest(parent="projects/alpha"), metadata=as_beta
        ),
        datasets.UpdateDataset(
            datasets_pb2.UpdateDatasetRequest(
                dataset=datasets_pb2.Dataset(name=secret.name, display_name="mine now")
            ),
            metadata=as_beta,
        ),
        datasets.DeleteDataset(
            datasets_pb2.DeleteDatasetRequest(name=secret.name), metadata=as_beta
        ),
        datasets.AddLogs(
            datasets_pb2.AddLogsRequest(dataset=secret.name, log_names=beta_logs),
            metadata=as_beta,
        ),
        datasets.RemoveLogs(
            datasets_pb2.RemoveLogsRequest(dataset=secret.name, log_names=alpha_logs),
            metadata=as_beta,
        ),
        datasets.ExportDataset(
            datasets_pb2.ExportDatasetRequest(
                name=secret.name, format=datasets_pb2.EXPORT_FORMAT_JSONL
            ),
            metadata=as_beta,
        ).read(),
        datasets.CreateTunedModelFromDataset(
            datasets_pb2.CreateTunedModelFromDatasetRequest(
                dataset=secret.name, tuned_model=tuned_model_pb2.TunedModel(base_model=BASE_MODEL)
            ),
            metadata=as_beta,
        ),
        # Nor can beta put alpha's logs in a dataset of its own.
        datasets.CreateDataset(
            datasets_pb2.CreateDatasetRequest(dataset=new_dataset("Stolen"), log_names=alpha_logs),
            metadata=as_beta,
        ),
        datasets.CreateDataset(
            datasets_pb2.CreateDatasetRequest(parent="projects/alpha", dataset=new_dataset("In")),
            metadata=as_beta,
        ),
    ]
    for call in denied:
        assert (await rpc_error(call)).code() is grpc.StatusCode.PERMISSION_DENIED

    # In beta's own project, alpha's dataset id and log ids name nothing.
    own_name = f"projects/-/datasets/{dataset_id}"
    for call in (
        datasets.GetDataset(datasets_pb2.GetDatasetRequest(name=own_name), metadata=as_beta),
        datasets.ExportDataset(
            datasets_pb2.ExportDatasetRequest(name=own_name, format=datasets_pb2.EXPORT_FORMAT_CSV),
            metadata=as_beta,
        ).read(),
        datasets.DeleteDataset(datasets_pb2.DeleteDatasetRequest(name=own_name), metadata=as_beta),
        datasets.CreateDataset(
            datasets_pb2.CreateDatasetRequest(
                dataset=new_dataset("Stolen"),
                log_names=[name.replace("projects/alpha/", "projects/-/") for name in alpha_logs],
            ),
            metadata=as_beta,
        ),
    ):
        assert (await rpc_error(call)).code() is grpc.StatusCode.NOT_FOUND
    listed = await datasets.ListDatasets(datasets_pb2.ListDatasetsRequest(), metadata=as_beta)
    assert secret.name not in [dataset.name for dataset in listed.datasets]
    # A filter only ever reaches the caller's own logs.
    by_filter = await datasets.CreateDataset(
        datasets_pb2.CreateDatasetRequest(
            dataset=new_dataset("Filtered"), filter=f'labels.case = "{alpha_case}"'
        ),
        metadata=as_beta,
    )
    assert by_filter.log_count == 0
    # Alpha's dataset is untouched.
    after = await datasets.GetDataset(
        datasets_pb2.GetDatasetRequest(name=secret.name), metadata=bearer(ALPHA)
    )
    assert after == secret
    unauthenticated = await rpc_error(datasets.ListDatasets(datasets_pb2.ListDatasetsRequest()))
    assert unauthenticated.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_malformed_requests_name_the_field(
    datasets: datasets_pb2_grpc.DatasetServiceStub,
) -> None:
    pb = datasets_pb2
    some_log = "projects/alpha/logs/" + "0" * 24
    cases = [
        ("GetDataset", pb.GetDatasetRequest(name="datasets/x"), "name"),
        ("GetDataset", pb.GetDatasetRequest(name="projects/alpha/datasets/Bad_Id"), "name"),
        ("ListDatasets", pb.ListDatasetsRequest(parent="folders/alpha"), "parent"),
        ("ListDatasets", pb.ListDatasetsRequest(page_token="nonsense"), "page_token"),
        ("ListDatasets", pb.ListDatasetsRequest(page_size=-1), "page_size"),
        ("CreateDataset", pb.CreateDatasetRequest(dataset=new_dataset("")), "dataset.display_name"),
        (
            "CreateDataset",
            pb.CreateDatasetRequest(dataset=new_dataset("x" * 129)),
            "dataset.display_name",
        ),
        (
            "CreateDataset",
            pb.CreateDatasetRequest(dataset=new_dataset(description="d" * 10_001)),
            "dataset.description",
        ),
        (
            "CreateDataset",
            pb.CreateDatasetRequest(dataset=new_dataset(), dataset_id="-x"),
            "dataset_id",
        ),
        ("CreateDataset", pb.CreateDatasetRequest(dataset=new_dataset(), filter="a = ("), "filter"),
        (
            "CreateDataset",
            pb.CreateDatasetRequest(dataset=new_dataset(), log_names=[some_log], filter="a = 1"),
            "filter",
        ),
        (
            "CreateDataset",
            pb.CreateDatasetRequest(dataset=new_dataset(), log_names=["projects/alpha/logs/x"]),
            "log_names[0]",
        ),
        (
            "CreateDataset",
            pb.CreateDatasetRequest(dataset=new_dataset(), log_names=[some_log] * 10_001),
            "log_names",
        ),
        ("AddLogs", pb.AddLogsRequest(dataset="projects/alpha/datasets/x"), "log_names"),
        ("RemoveLogs", pb.RemoveLogsRequest(dataset="projects/alpha"), "dataset"),
        ("UpdateDataset", pb.UpdateDatasetRequest(), "dataset.name"),
        ("DeleteDataset", pb.DeleteDatasetRequest(name=""), "name"),
        ("CreateTunedModelFromDataset", pb.CreateTunedModelFromDatasetRequest(), "dataset"),
    ]
    for method, request, field in cases:
        error = await rpc_error(getattr(datasets, method)(request, metadata=bearer(ALPHA)))
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (method, field)
        assert violated_fields(error) == [field], (method, field, error.details())


async def test_batch_export_runs_on_the_batch_api(
    gateway: Gateway,
    datasets: datasets_pb2_grpc.DatasetServiceStub,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    operations: operations_pb2_grpc.OperationsStub,
) -> None:
    case, names = await logged_calls(gateway, generative, ["Name a river", "Name a mountain"])
    created = await datasets.CreateDataset(
        datasets_pb2.CreateDatasetRequest(dataset=new_dataset("Batch me"), log_names=names),
        metadata=bearer(ALPHA),
    )
    logs, _ = await list_logs(
        gateway.store, "alpha", filter_text=f'labels.case = "{case}"', full=True
    )
    answers = {
        log.id: response_text(
            json_format.Parse(log.response_json, generative_service_pb2.GenerateContentResponse())
        )
        for log in logs
    }
    _, data, _ = await export(datasets, created.name, datasets_pb2.EXPORT_FORMAT_BATCH)
    batch = generative_service_pb2.GenerateContentBatch(model=MODEL, display_name="re-run")
    keys = []
    for line in data.decode().splitlines():
        parsed = json.loads(line)
        inlined = batch.input_config.requests.requests.add()
        json_format.ParseDict(parsed["request"], inlined.request)
        inlined.metadata.update({"key": parsed["key"]})
        keys.append(parsed["key"])
    operation = await generative.BatchGenerateContent(
        generative_service_pb2.BatchGenerateContentRequest(batch=batch), metadata=bearer(ALPHA)
    )
    assert operation.name.startswith("batches/")
    done = await operations.WaitOperation(
        operations_pb2.WaitOperationRequest(name=operation.name), metadata=bearer(ALPHA), timeout=20
    )
    assert done.done and not done.HasField("error")
    # The response's type URL names Google's internal package; the bytes are the message.
    output = generative_service_pb2.GenerateContentBatchOutput.FromString(done.response.value)
    answered = output.inlined_responses.inlined_responses
    assert [response.metadata["key"] for response in answered] == keys
    # The same requests get the same answers: the batch re-ran what was logged.
    for response in answered:
        assert response_text(response.response) == answers[response.metadata["key"]]
