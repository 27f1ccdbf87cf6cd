"""Tenancy: each project's callers use only their project's tuned models, batches, usage,
logs, datasets and runs. Tuned models and batches are upstream resources the gateway owns
for its projects (it records who created each); another project's call on one is
PERMISSION_DENIED before anything goes upstream, and lists show the caller's own only."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import field_mask_pb2

from gemini_gateway.client.gateway_client import text_request
from gemini_gateway.emulator.runner import EmulatorHandle, start_emulator
from gemini_gateway.emulator.settings import EmulatorSettings
from gemini_gateway.generated.gemini.gateway.v1 import (
    datasets_pb2,
    datasets_pb2_grpc,
    logs_pb2,
    logs_pb2_grpc,
    runs_pb2,
    runs_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)
from gemini_gateway.generated.gemini.gateway.v1 import operations_pb2 as watch_pb2
from gemini_gateway.generated.gemini.gateway.v1 import operations_pb2_grpc as watch_pb2_grpc
from gemini_gateway.generated.google.ai.generativelanguage.v1 import (
    generative_service_pb2_grpc as v1_generative_grpc,
)
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2,
    generative_service_pb2_grpc,
    model_service_pb2,
    model_service_pb2_grpc,
    tuned_model_pb2,
)
from gemini_gateway.server.app import Gateway, start_gateway
from gemini_gateway.server.config import CallerConfig, ProjectConfig, Settings
from gemini_gateway.server.identity import token_sha256
from gemini_gateway.server.tenancy import _decode_token, _encode_token, owned_name

TOKENS = {"alpha": "alpha-token", "beta": "beta-token", "admin": "admin-token"}
BASE = "models/gemini-2.5-flash"
DENIED = grpc.StatusCode.PERMISSION_DENIED
_ids = itertools.count()


def as_(project: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[project]}"),)


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[EmulatorHandle]:
    handle = await start_emulator(EmulatorSettings(tuning_seconds=0.2, batch_seconds=1000))
    yield handle
    await handle.close()


@pytest.fixture(scope="module")
async def gateway(
    upstream: EmulatorHandle, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    store = tmp_path_factory.mktemp("tenancy") / "gw.db"
    gw = await start_gateway(
        Settings(
            upstream="emulator",
            upstream_url=upstream.url,
            port=0,
            store_url=f"sqlite+aiosqlite:///{store}",
            logging_enabled=True,
            unowned_resources_project="admin",
            projects={
                name: ProjectConfig(
                    callers=[CallerConfig(name=f"{name}-svc", token_sha256=token_sha256(token))]
                )
                for name, token in TOKENS.items()
            },
        )
    )
    yield gw
    await gw.stop(0)


@pytest.fixture(scope="module")
async def stubs(gateway: Gateway) -> AsyncIterator[dict[str, Any]]:
    async with grpc.aio.insecure_channel(gateway.target) as channel:
        yield {
            "models": model_service_pb2_grpc.ModelServiceStub(channel),
            "generative": generative_service_pb2_grpc.GenerativeServiceStub(channel),
            "v1": v1_generative_grpc.GenerativeServiceStub(channel),
            "operations": operations_pb2_grpc.OperationsStub(channel),
            "watch": watch_pb2_grpc.OperationWatchServiceStub(channel),
            "usage": usage_pb2_grpc.UsageServiceStub(channel),
            "logs": logs_pb2_grpc.LogServiceStub(channel),
            "datasets": datasets_pb2_grpc.DatasetServiceStub(channel),
            "runs": runs_pb2_grpc.RunServiceStub(channel),
        }


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def tuned_model(**fields: Any) -> tuned_model_pb2.TunedModel:
    return tuned_model_pb2.TunedModel(
        base_model=BASE,
        tuning_task=tuned_model_pb2.TuningTask(
            training_data=tuned_model_pb2.Dataset(
                examples=tuned_model_pb2.TuningExamples(
                    examples=[tuned_model_pb2.TuningExample(text_input="1", output="2")]
                )
            )
        ),
        **fields,
    )


async def create(
    stubs: dict[str, Any], project: str, prefix: str = "m"
) -> operations_pb2.Operation:
    request = model_service_pb2.CreateTunedModelRequest(
        tuned_model=tuned_model(), tuned_model_id=f"{prefix}-{project}-{next(_ids)}"
    )
    return await stubs["models"].CreateTunedModel(request, metadata=as_(project))


async def code_of(call: Any) -> grpc.StatusCode:
    try:
        result = await call
        if hasattr(result, "__aiter__"):
            async for _ in result:
                pass
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def streamed_code(stream: Any) -> grpc.StatusCode:
    try:
        async for _ in stream:
            break
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    stream.cancel()
    return grpc.StatusCode.OK


async def upstream_paths(http: aiohttp.ClientSession, upstream: EmulatorHandle) -> list[str]:
    async with http.get(f"{upstream.url}/_emulator/requests") as response:
        return [entry["path"] for entry in await response.json()]


def test_owned_names_and_page_tokens() -> None:
    assert owned_name("tunedModels/abc") == "tunedModels/abc"
    assert owned_name("tunedModels/abc/operations/x") == "tunedModels/abc"
    assert owned_name("batches/b1") == "batches/b1"
    assert owned_name("batches") is None
    assert owned_name("models/gemini-2.5-flash") is None
    assert owned_name("tunedModels/") is None
    assert _decode_token(_encode_token("upstream-token", 3, 100)) == ("upstream-token", 3, 100)
    assert _decode_token("") == ("", 0, None)


async def test_another_projects_tuned_model_is_out_of_reach(
    stubs: dict[str, Any], upstream: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    operation = await create(stubs, "alpha")
    name = owned_name(operation.name)
    assert name is not None
    models, operations = stubs["models"], stubs["operations"]
    assert (await models.GetTunedModel(
        model_service_pb2.GetTunedModelRequest(name=name), metadata=as_("alpha")
    )).name == name  # fmt: skip
    beta = as_("beta")
    async with http.delete(f"{upstream.url}/_emulator/requests"):
        pass
    prompt = text_request(name, "hello")
    update = model_service_pb2.UpdateTunedModelRequest(
        tuned_model=tuned_model_pb2.TunedModel(name=name, display_name="mine now"),
        update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
    )
    source = tuned_model(tuned_model_source=tuned_model_pb2.TunedModelSource(tuned_model=name))
    source.ClearField("base_model")
    calls = {
        "GetTunedModel": models.GetTunedModel(
            model_service_pb2.GetTunedModelRequest(name=name), metadata=beta
        ),
        "UpdateTunedModel": models.UpdateTunedModel(update, metadata=beta),
        "DeleteTunedModel": models.DeleteTunedModel(
            model_service_pb2.DeleteTunedModelRequest(name=name), metadata=beta
        ),
        "CreateTunedModel from it": models.CreateTunedModel(
            model_service_pb2.CreateTunedModelRequest(tuned_model=source), metadata=beta
        ),
        "GenerateContent": stubs["generative"].GenerateContent(prompt, metadata=beta),
        "v1 GenerateContent": stubs["v1"].GenerateContent(_v1_request(name), metadata=beta),
        "GetOperation": operations.GetOperation(
            operations_pb2.GetOperationRequest(name=operation.name), metadata=beta
        ),
        "ListOperations": operations.ListOperations(
            operations_pb2.ListOperationsRequest(name=name), metadata=beta
        ),
        "CancelOperation": operations.CancelOperation(
            operations_pb2.CancelOperationRequest(name=operation.name), metadata=beta
        ),
        "WaitOperation": operations.WaitOperation(
            operations_pb2.WaitOperationRequest(name=operation.name), metadata=beta
        ),
    }
    for what, call in calls.items():
        assert await code_of(call) is DENIED, what
    streams = {
        "StreamGenerateContent": stubs["generative"].StreamGenerateContent(prompt, metadata=beta),
        "WatchOperation": stubs["watch"].WatchOperation(
            watch_pb2.WatchOperationRequest(name=operation.name), metadata=beta
        ),
    }
    for what, stream in streams.items():
        assert await streamed_code(stream) is DENIED, what
    # None of it reached the upstream.
    assert not [path for path in await upstream_paths(http, upstream) if name in path]
    # The owner can do all of it.
    done = await operations.WaitOperation(
        operations_pb2.WaitOperationRequest(name=operation.name), metadata=as_("alpha"), timeout=20
    )
    assert done.done
    answer = await stubs["generative"].GenerateContent(prompt, metadata=as_("alpha"))
    assert answer.candidates


def _v1_request(model: str) -> Any:
    from gemini_gateway.generated.google.ai.generativelanguage.v1 import (
        content_pb2 as v1_content,
    )
    from gemini_gateway.generated.google.ai.generativelanguage.v1 import (
        generative_service_pb2 as v1_generative,
    )

    return v1_generative.GenerateContentRequest(
        model=model,
        contents=[v1_content.Content(role="user", parts=[v1_content.Part(text="hi")])],
    )


async def _listed(stubs: dict[str, Any], project: str, page_size: int) -> list[str]:
    names: list[str] = []
    token = ""
    for _ in range(50):
        page = await stubs["models"].ListTunedModels(
            model_service_pb2.ListTunedModelsRequest(page_size=page_size, page_token=token),
            metadata=as_(project),
        )
        assert len(page.tuned_models) <= page_size
        names += [model.name for model in page.tuned_models]
        token = page.next_page_token
        if not token:
            return names
    raise AssertionError("the pages never ended")


async def test_lists_hold_the_callers_own_models_page_by_page(
    stubs: dict[str, Any], upstream: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    alpha = {owned_name((await create(stubs, "alpha", "list")).name) for _ in range(3)}
    beta = {owned_name((await create(stubs, "beta", "list")).name) for _ in range(2)}
    unowned = await _create_upstream(http, upstream)
    for project, page_size in (("alpha", 1), ("alpha", 2), ("alpha", 50), ("beta", 1)):
        listed = await _listed(stubs, project, page_size)
        assert len(listed) == len(set(listed)), "no model twice"
        own = alpha if project == "alpha" else beta
        assert own <= set(listed)
        assert not set(listed) & ((beta if project == "alpha" else alpha) | {unowned})
    admin = await _listed(stubs, "admin", 3)
    assert unowned in admin and not set(admin) & (alpha | beta)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stubs["models"].ListTunedModels(
            model_service_pb2.ListTunedModelsRequest(page_token="not-ours"), metadata=as_("alpha")
        )
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def _create_upstream(http: aiohttp.ClientSession, upstream: EmulatorHandle) -> str:
    """A tuned model made straight at the upstream: the gateway knows no owner for it."""
    body = {
        "baseModel": BASE,
        "tuningTask": {
            "trainingData": {"examples": {"examples": [{"textInput": "a", "output": "b"}]}}
        },
    }
    model_id = f"direct-{next(_ids)}"
    async with http.post(
        f"{upstream.url}/v1beta/tunedModels?tunedModelId={model_id}", json=body
    ) as r:
        assert r.status == 200, await r.text()
    return f"tunedModels/{model_id}"


async def test_models_of_no_project_are_the_admin_projects(
    stubs: dict[str, Any], upstream: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    unowned = await _create_upstream(http, upstream)
    get = model_service_pb2.GetTunedModelRequest(name=unowned)
    assert await code_of(stubs["models"].GetTunedModel(get, metadata=as_("alpha"))) is DENIED
    assert (await stubs["models"].GetTunedModel(get, metadata=as_("admin"))).name == unowned
    # A name that does not exist has no owner either: not revealed, refused.
    missing = model_service_pb2.GetTunedModelRequest(name="tunedModels/never-made")
    assert await code_of(stubs["models"].GetTunedModel(missing, metadata=as_("alpha"))) is DENIED


async def test_a_deleted_model_stays_its_owners(stubs: dict[str, Any]) -> None:
    name = owned_name((await create(stubs, "alpha", "gone")).name)
    await stubs["models"].DeleteTunedModel(
        model_service_pb2.DeleteTunedModelRequest(name=name), metadata=as_("alpha")
    )
    get = model_service_pb2.GetTunedModelRequest(name=name)
    assert await code_of(stubs["models"].GetTunedModel(get, metadata=as_("alpha"))) is (
        grpc.StatusCode.NOT_FOUND
    )
    assert await code_of(stubs["models"].GetTunedModel(get, metadata=as_("beta"))) is DENIED


async def test_batches_are_their_creators(stubs: dict[str, Any]) -> None:
    request = generative_service_pb2.BatchGenerateContentRequest(
        batch=generative_service_pb2.GenerateContentBatch(
            model=BASE,
            display_name="alpha's batch",
            input_config=generative_service_pb2.InputConfig(
                requests=generative_service_pb2.InlinedRequests(
                    requests=[
                        generative_service_pb2.InlinedRequest(request=text_request(BASE, "x"))
                    ]
                )
            ),
        )
    )
    request.batch.input_config.requests.requests[0].request.ClearField("model")
    batch = await stubs["generative"].BatchGenerateContent(request, metadata=as_("alpha"))
    assert batch.name.startswith("batches/")
    operations = stubs["operations"]
    get = operations_pb2.GetOperationRequest(name=batch.name)
    assert (await operations.GetOperation(get, metadata=as_("alpha"))).name == batch.name
    assert await code_of(operations.GetOperation(get, metadata=as_("beta"))) is DENIED
    cancel = operations_pb2.CancelOperationRequest(name=batch.name)
    assert await code_of(operations.CancelOperation(cancel, metadata=as_("beta"))) is DENIED
    listing = operations_pb2.ListOperationsRequest(name="batches", page_size=10)
    alpha_batches = await operations.ListOperations(listing, metadata=as_("alpha"))
    assert batch.name in [op.name for op in alpha_batches.operations]
    beta_batches = await operations.ListOperations(listing, metadata=as_("beta"))
    assert batch.name not in [op.name for op in beta_batches.operations]


async def test_a_model_tuned_from_a_dataset_is_its_projects(
    stubs: dict[str, Any], gateway: Gateway
) -> None:
    case = f"tune{next(_ids)}"
    for prompt in ("one", "two"):
        await stubs["generative"].GenerateContent(
            text_request(BASE, prompt, {"case": case}), metadata=as_("alpha")
        )
    await gateway.recorder.flush()
    dataset = await stubs["datasets"].CreateDataset(
        datasets_pb2.CreateDatasetRequest(
            dataset=datasets_pb2.Dataset(display_name="to tune"), filter=f'labels.case = "{case}"'
        ),
        metadata=as_("alpha"),
    )
    operation = await stubs["datasets"].CreateTunedModelFromDataset(
        datasets_pb2.CreateTunedModelFromDatasetRequest(
            dataset=dataset.name,
            tuned_model=tuned_model_pb2.TunedModel(base_model=BASE),
            tuned_model_id=f"from-dataset-{next(_ids)}",
        ),
        metadata=as_("alpha"),
    )
    name = owned_name(operation.name)
    get = model_service_pb2.GetTunedModelRequest(name=name)
    assert (await stubs["models"].GetTunedModel(get, metadata=as_("alpha"))).name == name
    assert await code_of(stubs["models"].GetTunedModel(get, metadata=as_("beta"))) is DENIED


async def test_the_gateways_own_services_keep_projects_apart(stubs: dict[str, Any]) -> None:
    beta = "projects/beta"
    calls = {
        "QueryUsage": stubs["usage"].QueryUsage(
            usage_pb2.QueryUsageRequest(parent=beta), metadata=as_("alpha")
        ),
        "ListLabelKeys": stubs["usage"].ListLabelKeys(
            usage_pb2.ListLabelKeysRequest(parent=beta), metadata=as_("alpha")
        ),
        "ListLogs": stubs["logs"].ListLogs(
            logs_pb2.ListLogsRequest(parent=beta), metadata=as_("alpha")
        ),
        "GetLoggingSettings": stubs["logs"].GetLoggingSettings(
            logs_pb2.GetLoggingSettingsRequest(name=f"{beta}/loggingSettings"),
            metadata=as_("alpha"),
        ),
        "ListDatasets": stubs["datasets"].ListDatasets(
            datasets_pb2.ListDatasetsRequest(parent=beta), metadata=as_("alpha")
        ),
        "ListRuns": stubs["runs"].ListRuns(
            runs_pb2.ListRunsRequest(parent=f"{beta}/datasets/any"), metadata=as_("alpha")
        ),
    }
    for what, call in calls.items():
        assert await code_of(call) is DENIED, what
